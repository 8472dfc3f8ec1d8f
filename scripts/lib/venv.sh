# shellcheck shell=bash
# Creates the project's virtual environment (.venv) and installs the project with the extras given.
# Usage: venv_setup test   (or: venv_setup "test,bench")

venv_setup() {
  local extras="${1:-}"
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  local py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python >= 3.11 is required (found: $("$py" --version 2>&1)); set PYTHON to one" >&2
    return 1
  fi
  if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "python venv support is missing: install python3-venv" >&2
      return 1
    fi
  fi
  [ -x "$root/.venv/bin/python" ] || "$py" -m venv "$root/.venv"
  local spec="$root"
  [ -n "$extras" ] && spec="$root[$extras]"
  "$root/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$root/.venv/bin/python" -m pip install -q -e "$spec"
  export PATH="$root/.venv/bin:$PATH"
}
