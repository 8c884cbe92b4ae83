# The detached lease holder of a kept container (started by hold.sh, same environment).
exec 9<>"$DIR/lease.lock" || exit 71
flock -w 120 9 || exit 75
printf '%s\n' "$HOLDER" >"$DIR/lease.holder"
timeout "$TTL" docker wait "$NAME" >/dev/null 2>&1
docker rm -f "$NAME" >/dev/null 2>&1
true
