#!/usr/bin/env bash
# Debian's headless Chromium for the dashboard test: installs `chromium` if missing, prints its path.
set -euo pipefail
if ! command -v chromium >/dev/null; then
  echo "chromium: installing Debian's chromium package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v chromium
