# shellcheck shell=bash
# Makes the headless browser of the status-page tests available: Debian's `chromium` and `chromium-driver`.
#
# Source it, then call `browser_setup`; it exports CD_CHROMIUM and CD_CHROMEDRIVER (the two binaries) when they are
# there. As root on Debian it apt-installs the packages when they are missing, as engine.sh does for the engine.
# Nothing is downloaded besides Debian's packages: selenium is pointed at these binaries, so its own driver
# manager never runs. Without them the browser tests skip, or fail under CI=true.

. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_browser_log() { printf '[browser] %s\n' "$*" >&2; }

browser_setup() {
  local chromium=/usr/bin/chromium driver=/usr/bin/chromedriver
  if [ ! -x "$chromium" ] || [ ! -x "$driver" ]; then
    apt_install chromium chromium-driver fonts-dejavu-core || return 1
  fi
  export CD_CHROMIUM="$chromium" CD_CHROMEDRIVER="$driver"
  _browser_log "$("$chromium" --version 2>/dev/null || echo chromium), $("$driver" --version 2>/dev/null | cut -d' ' -f1-2)"
}
