# pytest-hil's compose steps, on the engine's host (this host for docker targets, the board
# for ssh targets): hil-compose ACTION ARGS...  Parameters arrive as positional arguments
# and environment variables, quoted once by hil.backends.scripts; never spliced into code.
#   DIR        the checkout on the engine's host (compose runs there)
#   HIL_IMAGE  what ${HIL_IMAGE} stands for in the compose file
#   FLAVOUR    plugin | standalone (config)
#   DATA       the override file, base64 (write, create)
#   SINK       create: where compose's own output goes ("" = standard error)
# After ACTION, "$@" is the compose command line (docker compose -p NAME -f FILE ...) for
# config, run, create and down; labels and names for the others.
action=$1
shift

in_dir() {
  cd "$DIR" || exit 3
  export HIL_IMAGE
}

write_override() {  # $1: the override's path; private: it holds the run's environment
  (umask 077 && mkdir -p "$(dirname "$1")" && printf '%s' "$DATA" | base64 -d >"$1")
}

remove_project() {  # $1: compose's project label, $2: the project
  docker ps -aq --filter "label=$1=$2" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker network ls -q --filter "label=$1=$2" | xargs -r docker network rm >/dev/null 2>&1
  docker volume ls -q --filter "label=$1=$2" | xargs -r docker volume rm -f >/dev/null 2>&1
  true
}

case "$action" in
detect)  # which compose answers: the plugin first, then the standalone
  if docker compose version >/dev/null 2>&1; then
    echo plugin "$(docker compose version --short 2>/dev/null)"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo standalone "$(docker-compose version --short 2>/dev/null)"
  else
    echo none
  fi
  ;;
projects)  # $1: our label, $2: compose's project label: every project name either carries
  { docker ps -a --filter "label=$1" --format "{{.Label \"$1\"}}"
    docker network ls --filter "label=$2" --format "{{.Label \"$2\"}}"
    docker volume ls --filter "label=$2" --format "{{.Label \"$2\"}}"; } 2>/dev/null | sort -u
  ;;
remove)  # $1: compose's project label, then project names
  label=$1
  shift
  for name in "$@"; do remove_project "$label" "$name"; done
  ;;
config)  # the resolved configuration as JSON (the standalone prints YAML: its Python converts)
  in_dir
  if [ "$FLAVOUR" = plugin ]; then
    exec "$@" config --format json
  fi
  c=$("$@" config) || exit $?
  py=$(sed -n '1s/^#!//p' "$(command -v docker-compose)")
  case "$py" in *python*) ;; *) py=python3 ;; esac
  printf '%s\n' "$c" | $py -c 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'
  ;;
write)  # $1: the override's path
  write_override "$1"
  ;;
run)  # a compose command, from the checkout
  in_dir
  exec "$@"
  ;;
missing)  # pairs of service and image tag: the services whose tag the engine lacks
  while [ $# -ge 2 ]; do
    docker image inspect "$2" >/dev/null 2>&1 || echo "$1"
    shift 2
  done
  ;;
rmi)  # $1: an image to remove
  docker rmi -f "$1" >/dev/null 2>&1
  true
  ;;
pytest)  # $1: an image: the pytest version it runs
  exec docker run --rm --network none --entrypoint python3 "$1" \
    -c 'import pytest; print(pytest.__version__)'
  ;;
states)  # $1: compose's project label=project, $2: compose's service label
  fmt="{{index .Config.Labels \"$2\"}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.ExitCode}}"
  ids=$(docker ps -aq --filter "label=$1") || exit 3
  # A container removed between the two calls (the test container's) is skipped.
  [ -z "$ids" ] || docker inspect -f "$fmt" $ids 2>/dev/null
  exit 0
  ;;
logs)  # $1: project label=project, $2: service label, $3: the tests' service, $4: marker, $5: lines
  for c in $(docker ps -aq --filter "label=$1"); do
    s=$(docker inspect -f "{{index .Config.Labels \"$2\"}}" "$c")
    [ "$s" = "$3" ] && continue
    printf '%s%s\n' "$4" "$s"
    docker logs -t "$c" 2>&1 | tail -n "$5"
  done
  ;;
create)  # $1: the override's path; then the compose command that creates the tests' container
  override=$1
  shift
  write_override "$override" || exit $?
  in_dir
  if [ -n "${SINK:-}" ]; then
    exec "$@" >"$SINK" 2>&1
  fi
  exec "$@" >&2
  ;;
down)  # $1: compose's project label, $2: the project; then the compose down command
  label=$1
  name=$2
  shift 2
  (in_dir && "$@" >/dev/null 2>&1)
  remove_project "$label" "$name"
  ;;
*)
  echo "hil-compose: unknown action $action" >&2
  exit 64
  ;;
esac
