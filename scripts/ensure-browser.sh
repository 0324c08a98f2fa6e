#!/usr/bin/env bash
# Make sure Debian's Chromium is installed (/usr/bin/chromium): the panel's
# browser tests (tests/test_panel_browser.py) drive it with Playwright. Installs
# it with apt when missing, quietly; stops with one line saying so when apt cannot.
set -u
chromium=/usr/bin/chromium
[ -x "$chromium" ] && exit 0

log=$(mktemp -t ensure-browser.XXXXXX.log)
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$log" 2>&1; }
echo "ensure-browser: installing Debian's chromium (apt-get install chromium)" >&2
# A fresh machine may have no package lists yet: update them once, then try again.
if ! apt_install && ! { apt-get update -q >>"$log" 2>&1 && apt_install; }; then
    echo "ensure-browser: apt-get install chromium failed (root needed?); see $log" >&2
    exit 1
fi
if [ ! -x "$chromium" ]; then
    echo "ensure-browser: chromium installed but $chromium is missing; see $log" >&2
    exit 1
fi
rm -f "$log"
exit 0
