# shellcheck shell=bash
# Makes the headless browser of the status-page tests available: Debian's `chromium` and `chromium-driver`.
#
# Source it, then call `browser_setup`; it exports CD_CHROMIUM and CD_CHROMEDRIVER (the two binaries) when they are
# there. As root on Debian it apt-installs the packages when they are missing, as engine.sh does for the engine.
# Nothing is downloaded besides Debian's packages: selenium is pointed at these binaries, so its own driver
# manager never runs. Without them the browser tests skip, or fail under CI=true.

_browser_log() { printf '[browser] %s\n' "$*" >&2; }

browser_setup() {
  local chromium=/usr/bin/chromium driver=/usr/bin/chromedriver
  if [ ! -x "$chromium" ] || [ ! -x "$driver" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      _browser_log "chromium or chromedriver is missing and this is not root on Debian: install chromium and chromium-driver"
      return 1
    fi
    _browser_log "installing chromium and chromium-driver (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq -o DPkg::Lock::Timeout=300 >/dev/null
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
      chromium chromium-driver fonts-dejavu-core >/dev/null || return 1
  fi
  export CD_CHROMIUM="$chromium" CD_CHROMEDRIVER="$driver"
  _browser_log "$("$chromium" --version 2>/dev/null || echo chromium), $("$driver" --version 2>/dev/null | cut -d' ' -f1-2)"
}
