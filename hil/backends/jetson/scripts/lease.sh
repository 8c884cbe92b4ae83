# The board's lease: takes the flock on the lease folder itself ($DIR, checked by lease_dir),
# says how it went, then holds it until standard input closes (the session's channel), so a
# dead session frees it.  A line `KEEP <container> <ttl>` and a holder line on standard input
# hand the locked descriptor to a detached keeper of that container (hold on failure): the
# lock is never let go between the session and the keeper, so no one else can take it.
#
# env DIR      the lease folder           HOLDER   this session's holder line (JSON)
#     TIMEOUT  seconds to wait for it     BUSY     the exit code when it stays taken
# out WAIT <holder>  (someone else has it), then ACQUIRED, or BUSY <holder> and exit $BUSY;
#     REFUSED <why> and exit 73 when the folder is not safe (see lease-dir.sh);
#     KEPT once a keeper holds the lease
#include lease-dir.sh
lease_dir make
exec 9<"$DIR" || exit 71
if ! flock -n 9; then
  printf 'WAIT %s\n' "$(read_holder)"
  if ! flock -w "$TIMEOUT" 9; then
    printf 'BUSY %s\n' "$(read_holder)"
    exit "$BUSY"
  fi
fi
write_holder "$HOLDER" || exit 72
echo ACQUIRED
while IFS= read -r line; do
  case $line in
    "KEEP "*) ;;
    *) continue ;;
  esac
  set -f; set -- $line
  NAME=$2 TTL=$3
  case $NAME$TTL in *[!A-Za-z0-9_.-]*|'') echo "BAD $line"; continue ;; esac
  IFS= read -r holder || exit 0
  write_holder "$holder" || exit 72
  export NAME TTL
  # The keeper inherits descriptor 9 (the held lock) and outlives the session's channel; it
  # lets go when the container stops, TTL seconds pass or `hil release` removes the container.
  setsid sh -c 'timeout "$TTL" docker wait "$NAME"; docker rm -f "$NAME"' \
    </dev/null >/dev/null 2>&1 &
  echo KEPT
  exit 0
done
