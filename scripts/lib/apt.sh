# shellcheck shell=bash
# apt_install PKG...: installs Debian packages, as root on Debian only (the engine's and the browser's setup use it).
# Returns 1, saying so, when that is not possible here.

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    printf '[apt] missing %s and not root on Debian: install them by hand\n' "$*" >&2
    return 1
  fi
  printf '[apt] installing %s\n' "$*" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" >/dev/null
}
