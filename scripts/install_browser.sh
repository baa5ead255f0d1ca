#!/usr/bin/env bash
# Install Debian's Chromium (/usr/bin/chromium) for the browser tests (tests/browser, pytest -m browser).
#
# Usage (CI, as root or through sudo):   scripts/install_browser.sh
#
# Idempotent: does nothing when /usr/bin/chromium is already there. Deliberately NOT
# `playwright install`: playwright's own browser download does not work in our CI; the
# tests drive the system Chromium instead (override the path with DEQKIT_CHROMIUM).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM already installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')); nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: apt-get not found; install Chromium yourself and set DEQKIT_CHROMIUM to its path" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser: must run as root (or with sudo available) to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_browser: apt-get update"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
echo "install_browser: apt-get install -y chromium"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser: apt-get finished but $CHROMIUM is missing" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
