# Whether the board's lease is held now, and by whom (for `hil doctor`).
#
# env DIR  the lease folder
# out FREE, or HELD and the holder line; REFUSED <why> when the folder is not safe
#include lease-dir.sh
lease_dir || { echo FREE; exit 0; }
exec 9<"$DIR" 2>/dev/null || { echo FREE; exit 0; }
if flock -n 9; then
  echo FREE
else
  echo HELD
  read_holder
fi
