# Keep a failed test's container: start it (the arguments: its `docker run -d` command),
# then a detached holder of the board's lease that outlives the session, takes the lock
# the session's own lease holds until the session ends, and lets go when the container
# stops, TTL seconds pass or `hil release` removes it.
#
# env NAME    the hold container's name     DIR     the lease folder
#     HOLDER  the holder line (JSON)         TTL     seconds to keep it
#     KEEPER  the text of hold-keeper.sh (run detached, with this environment)
# out HELD
docker rm -f "$NAME" >/dev/null 2>&1
"$@" >/dev/null || exit $?
(umask 0; mkdir -p "$DIR"; : >>"$DIR/lease.lock") 2>/dev/null
export NAME DIR HOLDER TTL
setsid nohup sh -c "$KEEPER" </dev/null >/dev/null 2>&1 &
echo HELD
