#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver (chromedriver), and Debian's Firefox ESR, for the web
# console's browser tests (tests/test_console_browser.py, against a real authority). Debian's
# packages only: nothing is downloaded at test time. selenium is told where chromedriver is (it
# never fetches one); Firefox needs no driver at all: since 128 it speaks WebDriver BiDi itself
# (tests/console_bidi.py), and Debian has no geckodriver package. A font package is named so that
# screenshots have legible text on a minimal image.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_debian_packages install-browser --no-recommends chromium chromium-driver firefox-esr fonts-dejavu-core

# Captured, not piped to head: under pipefail, head closing the pipe early makes chromium die of
# SIGPIPE (exit 141) now and then, which failed CI once.
version="$(chromium --version)"  # fails loudly if the binary is broken
echo "${version%%$'\n'*}"
version="$(firefox-esr --version)"
echo "${version%%$'\n'*}"
major="${version##* }"; major="${major%%.*}"
if (( major < 128 )); then  # WebDriver BiDi without geckodriver came with 128
    echo "install-browser: firefox-esr $major is too old for the console's tests (need >= 128)" >&2
    exit 1
fi
