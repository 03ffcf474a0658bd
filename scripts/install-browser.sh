#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its driver for the web page's end-to-end
# tests (tests/test_web.py). Idempotent: does nothing when chromium is already on PATH.
# Needs root (CI containers run as root); Playwright drives /usr/bin/chromium directly, so
# `playwright install` (a browser download) is never needed.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver
