# Whether the board's lease is held now, and by whom (for `hil doctor`).
#
# env DIR  the lease folder
# out FREE, or HELD and the holder line
exec 9<"$DIR/lease.lock" 2>/dev/null || { echo FREE; exit 0; }
if flock -n 9; then
  echo FREE
else
  echo HELD
  head -c 4096 "$DIR/lease.holder"
fi
