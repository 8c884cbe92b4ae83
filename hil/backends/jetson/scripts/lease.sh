# The board's lease: takes the flock on $DIR/lease.lock, says how it went, then holds
# it until standard input closes (the session's channel), so a dead session frees it.
#
# env DIR      the lease folder           HOLDER   this session's holder line (JSON)
#     TIMEOUT  seconds to wait for it     BUSY     the exit code when it stays taken
# out WAIT <holder>  (someone else has it), then ACQUIRED, or BUSY <holder> and exit $BUSY
(umask 0; mkdir -p "$DIR"; : >>"$DIR/lease.lock"; : >>"$DIR/lease.holder") 2>/dev/null
exec 9<>"$DIR/lease.lock" || exit 71
if ! flock -n 9; then
  printf 'WAIT %s\n' "$(head -c 4096 "$DIR/lease.holder")"
  if ! flock -w "$TIMEOUT" 9; then
    printf 'BUSY %s\n' "$(head -c 4096 "$DIR/lease.holder")"
    exit "$BUSY"
  fi
fi
printf '%s\n' "$HOLDER" >"$DIR/lease.holder"
echo ACQUIRED
exec cat >/dev/null
