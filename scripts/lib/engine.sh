# shellcheck shell=bash
# Starts (and stops) the Docker engine and the two loopback registries that the tests and the local demo use.
#
# Source it, then call `engine_start`; it exports DOCKER_HOST, CD_REGISTRY (plain registry, host:port),
# CD_AUTH_REGISTRY with CD_AUTH_REGISTRY_USER / CD_AUTH_REGISTRY_PASSWORD (basic-auth registry), and
# CD_ENGINE_PRIVATE=1 when it started an engine of its own. busybox-static is installed too: the tests and the demo
# make their base image from it, since nothing can be pulled. `engine_stop` stops only what engine_start started,
# by pid. As root on Debian it installs docker.io, docker-registry and apache2-utils when they are missing.
# Nothing is pulled from Docker Hub; registries run as plain processes, not containers.

ENGINE_DIR="${ENGINE_DIR:-/tmp/cd-engine.$$}"
_ENGINE_PIDS=()

. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_engine_log() { printf '[engine] %s\n' "$*" >&2; }

_engine_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

_engine_reachable() {
  # $1: DOCKER_HOST value; true when the engine answers /_ping.
  local sock="${1#unix://}"
  [ -S "$sock" ] && curl -fsS --max-time 3 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1
}

_engine_install() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}" || { _engine_log "or set DOCKER_HOST to a running engine"; return 1; }
}

_engine_wait_http() {
  # $1 url, $2 seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
    # a 401 also proves the server is up
    [ "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 401 ] && return 0
    sleep 0.1
  done
  return 1
}

_engine_start_dockerd() {
  mkdir -p "$ENGINE_DIR/data" "$ENGINE_DIR/exec"
  local sock="$ENGINE_DIR/d.sock"
  _engine_log "starting a private Docker engine at unix://$sock"
  dockerd --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" --pidfile "$ENGINE_DIR/dockerd.pid" \
    -H "unix://$sock" --storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none \
    >"$ENGINE_DIR/dockerd.log" 2>&1 &
  _ENGINE_PIDS+=($!)
  local i
  for ((i = 0; i < 300; i++)); do
    _engine_reachable "unix://$sock" && break
    sleep 0.1
  done
  if ! _engine_reachable "unix://$sock"; then
    _engine_log "overlay2 failed; retrying with the vfs storage driver (slower). Log: $ENGINE_DIR/dockerd.log"
    kill "${_ENGINE_PIDS[-1]}" 2>/dev/null; wait "${_ENGINE_PIDS[-1]}" 2>/dev/null
    unset '_ENGINE_PIDS[-1]'
    umount "$ENGINE_DIR/exec/netns/default" 2>/dev/null || true
    dockerd --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" --pidfile "$ENGINE_DIR/dockerd.pid" \
      -H "unix://$sock" --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
      >"$ENGINE_DIR/dockerd.log" 2>&1 &
    _ENGINE_PIDS+=($!)
    for ((i = 0; i < 300; i++)); do _engine_reachable "unix://$sock" && break; sleep 0.1; done
  fi
  _engine_reachable "unix://$sock" || { _engine_log "the engine did not start: see $ENGINE_DIR/dockerd.log"; return 1; }
  export DOCKER_HOST="unix://$sock"
  export CD_ENGINE_PRIVATE=1
}

_engine_start_registry() {
  # $1 name, $2 port, $3 (optional) htpasswd file
  local dir="$ENGINE_DIR/registry-$1"
  mkdir -p "$dir/storage"
  {
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$dir/storage"
    printf '  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%s\n' "$2"
    if [ -n "${3:-}" ]; then
      printf 'auth:\n  htpasswd:\n    realm: cd-test\n    path: %s\n' "$3"
    fi
  } >"$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  _ENGINE_PIDS+=($!)
  _engine_wait_http "http://127.0.0.1:$2/v2/" 10 || { _engine_log "registry $1 did not start: $dir/registry.log"; return 1; }
}

engine_start() {
  mkdir -p "$ENGINE_DIR"
  _engine_install || return 1
  local host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
  if _engine_reachable "$host"; then
    export DOCKER_HOST="$host"
    _engine_log "using the Docker engine at $DOCKER_HOST"
  elif [ "$(id -u)" = 0 ]; then
    _engine_start_dockerd || return 1
  else
    _engine_log "no Docker engine at $host, and only root can start one here"
    return 1
  fi
  local port auth_port
  port=$(_engine_free_port)
  auth_port=$(_engine_free_port)
  _engine_start_registry plain "$port" || return 1
  export CD_AUTH_REGISTRY_USER=ci-user
  export CD_AUTH_REGISTRY_PASSWORD="pw-$RANDOM$RANDOM"
  htpasswd -Bbc "$ENGINE_DIR/htpasswd" "$CD_AUTH_REGISTRY_USER" "$CD_AUTH_REGISTRY_PASSWORD" >/dev/null 2>&1
  _engine_start_registry auth "$auth_port" "$ENGINE_DIR/htpasswd" || return 1
  export CD_REGISTRY="127.0.0.1:$port"
  export CD_AUTH_REGISTRY="127.0.0.1:$auth_port"
  _engine_log "registries at $CD_REGISTRY and $CD_AUTH_REGISTRY (basic auth)"
}

engine_stop() {
  local pid
  for pid in "${_ENGINE_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${_ENGINE_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  _ENGINE_PIDS=()
  if [ -n "${CD_ENGINE_PRIVATE:-}" ]; then
    umount "$ENGINE_DIR/exec/netns/default" 2>/dev/null || true
    umount -R "$ENGINE_DIR/data/overlay2" 2>/dev/null || true
    rm -rf "$ENGINE_DIR" 2>/dev/null || true
  fi
}
