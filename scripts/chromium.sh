#!/usr/bin/env bash
# Headless Chromium and chromedriver from Debian's packages, for the UI's browser tests
# (tests/ui.rs, tests/operator/ui.rs, the e2e test). Installs them once; prints the browser.
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  command -v apt-get >/dev/null || {
    echo "the UI tests need Chromium and chromedriver: install them (Debian/Ubuntu: apt-get install chromium chromium-driver)" >&2
    exit 1
  }
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
chromium --version
