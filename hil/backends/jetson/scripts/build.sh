# docker build on the board from the synced tree.  The context is the files named in
# FILES (one a line) under DIR; the arguments are docker build's.  On success the image
# id follows on a line starting with ID_MARKER.
#
# env DIR FILES  LIMIT (seconds)  TAG  ID_MARKER
exec 2>&1
cd "$DIR" || exit 70
set -f
IFS='
'
tar -cf - -- $FILES | timeout -s INT "$LIMIT" docker build "$@" -
rc=$?
[ "$rc" = 0 ] && printf '%s%s\n' "$ID_MARKER" "$(docker image inspect -f '{{.Id}}' "$TAG")"
exit "$rc"
