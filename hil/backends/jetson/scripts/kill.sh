# Kill a run: the process group named in its pgid file, its container, the pgid file.
# $1 the container's name  $2 the pgid file
p=$(cat "$2" 2>/dev/null)
[ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null
docker rm -f "$1" >/dev/null 2>&1
rm -f "$2"
true
