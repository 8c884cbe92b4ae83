# Preflight of a jetson target: every check in one round trip, each answer under a
# "@@hil:NAME" line.  The GPU probe (gpu-probe.sh, in a container of the dependencies
# image) starts first, in the background, when the image and the worker are on the board.
#
# env TAG      the dependencies image ("" = no recipe)
#     RUNTIME  the target's docker runtime ("" = the engine's default)
#     REMOTE   remote_dir, relative to $HOME unless absolute
#     SYNCED   1 = report the digest of the last sync, unless anything changed since
#     LIB      the worker's folder, relative to $HOME (named by its content)
#     LIB_MOUNT, WORKER_IN  where the folder is mounted in a container, and the worker
#     FRESH    1 = probe the GPU even when a result for the same key is cached
#     PROBE    the text of gpu-probe.sh
s() { printf '\n@@hil:%s\n' "$1"; }
info=$(docker info --format '{{.ServerVersion}}|{{.DockerRootDir}}|{{json .Runtimes}}|{{.ID}}' 2>&1)
rc=$?
l="$HOME/$LIB"
iid=''
probing=''
tmp=$(mktemp)
if [ "$rc" = 0 ] && [ -n "$TAG" ]; then
  iid=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null)
fi
if [ -n "$iid" ] && [ -d "$l" ]; then
  (INFO=$info IID=$iid sh -c "$PROBE" hil-gpu-probe "$TAG" "$RUNTIME" "$l" "$FRESH" "$LIB_MOUNT" \
    "$WORKER_IN" >"$tmp" 2>&1) &
  probing=1
fi
s id; id -u; id -g
s host; hostname
s home; realpath -m -- "$HOME"
s dir; (cd "$HOME" && realpath -m -- "$REMOTE")
s arch; uname -m
s tegra; head -n 1 /etc/nv_tegra_release 2>/dev/null
s tools
for t in rsync flock setsid tegrastats nvidia-smi timeout tar base64; do
  command -v "$t" >/dev/null 2>&1 && echo "$t"
done
s swap; awk '/^SwapTotal:/{print $2}' /proc/meminfo
s info; printf '%s\nrc=%s\n' "$info" "$rc"
root=${info#*|}; root=${root%%|*}
s df; [ "$rc" = 0 ] && df -Pm "$root" 2>&1 | tail -n 1
if [ "$SYNCED" = 1 ]; then
  # The digest of the last sync, unless anything under remote_dir changed since.
  s synced
  d=$(cd "$HOME" && realpath -m -- "$REMOTE")
  m="${d%/*}/.hil-sync-${d##*/}"
  [ -f "$m" ] && [ -d "$d" ] && [ -z "$(find "$d" -newer "$m" -print -quit 2>/dev/null)" ] && cat "$m"
fi
s image; echo "$iid"
s worker; [ -d "$l" ] && echo present
wait
# The probe's output comes from the image: it may not open sections of its own.
s gpu; [ -n "$probing" ] && sed 's/^@@hil:/ @@hil:/' "$tmp"
rm -f "$tmp"
s end
