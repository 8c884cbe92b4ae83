# The CUDA probe inside the dependencies image: the worker's `--probe` in a container
# started with the target's runtime.  A successful result is cached on the board under a
# key of the boot id, the engine (version, data root, runtimes, id), daemon.json's mtime,
# the image id, the runtime and the worker folder's content-addressed name.
#
# $1 image  $2 runtime ("" = the engine's default)  $3 the worker's folder on the board
# $4 1 = probe even when a result is cached
# $5 where the folder is mounted in the container  $6 the worker's path in the container
# env INFO    `docker info` line (asked here when not given)
#     IID     the image id (asked here when not given)
#     LIB_B64 the worker's folder as a base64 tar, installed first when the board lacks it
# Prints "cached:yes" for a cached result, the probe's output, then "rc=N" (N: the
# container's exit status; 70: no worker, 71: no image).
image=$1
runtime=$2
l=$3
fresh=$4
mount=$5
worker=$6
cache="$HOME/.cache/pytest-hil"
if [ ! -d "$l" ] && [ -n "${LIB_B64:-}" ]; then
  mkdir -p "$l.$$" && printf '%s' "$LIB_B64" | base64 -d | tar -xf - -C "$l.$$" &&
    { mv -T "$l.$$" "$l" 2>/dev/null || rm -rf "$l.$$"; }
fi
if [ ! -d "$l" ]; then echo "no worker at $l"; echo rc=70; exit 0; fi
[ -n "${IID:-}" ] || IID=$(docker image inspect -f '{{.Id}}' "$image" 2>&1) || {
  echo "$IID"; echo rc=71; exit 0; }
[ -n "${INFO+x}" ] ||
  INFO=$(docker info --format '{{.ServerVersion}}|{{.DockerRootDir}}|{{json .Runtimes}}|{{.ID}}' 2>&1)
key=$(printf '%s|%s|%s|%s|%s|%s' "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" "$INFO" \
  "$(stat -c %Y /etc/docker/daemon.json 2>/dev/null)" "$IID" "$runtime" "${l##*/}" |
  md5sum | cut -c1-16)
cf="$cache/gpu-probe-$key"
if [ "$fresh" != 1 ] && [ -s "$cf" ]; then
  echo cached:yes
  cat "$cf"
  exit 0
fi
set -- docker run --rm --pull never --network none
[ -n "$runtime" ] && set -- "$@" --runtime "$runtime"
tmp=$(mktemp)
"$@" -v "$l:$mount:ro" --entrypoint python3 "$image" "$worker" --probe >"$tmp" 2>&1
echo "rc=$?" >>"$tmp"
cat "$tmp"
if [ "$(tail -n 1 "$tmp")" = rc=0 ]; then
  mkdir -p "$cache" && cp "$tmp" "$cf.$$" && mv "$cf.$$" "$cf"
fi
rm -f "$tmp"
