# One test run.  Installs the worker when the board lacks it, records the sync that
# preceded the run, writes lastfailed.json, removes stale containers, runs the container
# (the arguments: its `docker run` command) in this process group, reports its exit code
# and OOM state on a line starting with END on standard error, and sends the results
# folder after that line when it is small.
#
# env OUT         the run's results folder (the container writes in it: nothing here
#                 follows a link there)          NAME  the container's name
#     HOST        the run's own folder beside it (the container never sees it)
#     PIDF        this run's process group file  LABEL the label of pytest-hil containers
#     LIB         the worker's folder            LIB_B64  it as a base64 tar (when absent)
#     SYNC_MARKER, SYNC_DIGEST  the sync marker file and the digest to write in it
#     LASTFAILED  lastfailed.json's content (unset: none)
#     KEEP        how many results folders stay  INBAND_KB   the most sent in band
#     END         the end marker, followed on its line by the run's nonce
#     NONCE_FILE  the nonce's file in $OUT, for the worker
#     CREATE      with [compose]: shell that creates the container as the tests' service
#                 (its output in $HOST/compose/create.out); it is then started attached
# stdin: the run's nonce on the first line (read here; the container gets the rest). It goes
# into the results folder for the worker (which removes it before any test runs) and after
# the end marker, so that a test's forged marker is not taken for the end.
IFS= read -r NONCE || exit 70
mkdir -p "$OUT" || exit 70
mkdir -p -m 700 "$HOST" || exit 70
rm -f "$OUT/$NONCE_FILE"
(umask 077 && set -C && printf '%s\n' "$NONCE" >"$OUT/$NONCE_FILE") || exit 70
if [ ! -d "$LIB" ] && [ -n "${LIB_B64:-}" ]; then
  mkdir -p "$LIB.$$" && printf '%s' "$LIB_B64" | base64 -d | tar -xf - -C "$LIB.$$" &&
    { mv -T "$LIB.$$" "$LIB" 2>/dev/null || rm -rf "$LIB.$$"; }
fi
if [ ! -d "$LIB" ]; then
  echo "$0: the worker's folder $LIB is missing on the board" >&2
  exit 70
fi
[ -n "${SYNC_MARKER:-}" ] && printf '%s\n' "$SYNC_DIGEST" >"$SYNC_MARKER"
# A resumed run's folder holds what its first container wrote: a new file renamed in
# place replaces a link there rather than writing through it.
if [ -n "${LASTFAILED+x}" ]; then
  lf=$(mktemp "$OUT/.lastfailed.XXXXXX") && printf '%s' "$LASTFAILED" >"$lf" &&
    chmod 644 "$lf" && mv -fT "$lf" "$OUT/lastfailed.json" || exit 70
fi
# A run that did not finish leaves its .pgid file: only then can labelled containers be
# stale, so the usual run pays no extra docker call.
for f in "$OUT"/../*.pgid; do
  if [ -e "$f" ]; then
    ids=$(docker ps -aq --filter "label=$LABEL")
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
  fi
  break
done
echo $$ >"$PIDF"
(cd "${OUT%/*}" && ls -1t | grep -v '\.pgid$' | grep -v '\.host$' | tail -n +$((KEEP + 1)) |
  while IFS= read -r old; do rm -rf -- "$old" "$old.host"; done) 2>/dev/null
if [ -n "${CREATE:-}" ]; then
  mkdir -p "$HOST/compose"
  { sh -c "$CREATE" || { head -c 65536 "$HOST/compose/create.out" >&2; false; }; } &&
    docker start -a "$NAME"
else
  "$@"
fi
rc=$?
# pytest's own codes (0-5) need no post-mortem; anything else may be OOM or a kill.
st=''
if [ "$rc" -gt 5 ]; then
  st=$(docker inspect -f '{{.State.OOMKilled}} {{.State.ExitCode}}' "$NAME" 2>/dev/null)
fi
printf '%s%s %s %s\n' "$END" "$NONCE" "$rc" "$st" >&2
# The results follow the marker (small ones: big ones are fetched on their own).
[ "$(du -sk "$OUT" 2>/dev/null | cut -f1)" -le "$INBAND_KB" ] && tar -cf - -C "$OUT" . >&2 2>/dev/null
# Removal is off the session's path; a next run cleans up if this one did not finish.
(docker rm -f "$NAME"; rm -f "$PIDF") </dev/null >/dev/null 2>&1 &
exit $rc
