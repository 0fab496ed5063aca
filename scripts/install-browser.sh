#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver (chromedriver) for the web console's browser tests
# (tests/test_console_browser.py, selenium against a real authority). Debian's packages only:
# nothing is downloaded at test time, and selenium is told where the driver is (it never fetches
# one). A font package is named so that screenshots have legible text on a minimal image.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_debian_packages install-browser --no-recommends chromium chromium-driver fonts-dejavu-core

# Captured, not piped to head: under pipefail, head closing the pipe early makes chromium die of
# SIGPIPE (exit 141) now and then, which failed CI once.
version="$(chromium --version)"  # fails loudly if the binary is broken
echo "${version%%$'\n'*}"
