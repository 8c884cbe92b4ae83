# Start a failed test's hold container (the arguments: its `docker run -d` command); the
# session then hands its lease to a keeper of this container (lease.sh, KEEP).
#
# env NAME  the hold container's name
# out STARTED
docker rm -f "$NAME" >/dev/null 2>&1
"$@" >/dev/null || exit $?
echo STARTED
