#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian 12 machine, then run them:
# lint (ruff), types (mypy), and the layered test suite (unit, functional,
# integration against a real Tansu broker and clickhouse-server, end to end,
# the live page in headless Chromium).
# The tests start and stop the broker and ClickHouse server themselves, on free
# loopback ports. Run as root or with sudo available (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if ! command -v clickhouse-server >/dev/null 2>&1 || ! command -v kcat >/dev/null 2>&1 \
    || ! command -v chromedriver >/dev/null 2>&1; then
  echo "== installing clickhouse-server, kcat and headless Chromium (Debian packages) for the tests"
  export DEBIAN_FRONTEND=noninteractive
  PACKAGES="clickhouse-server clickhouse-client kcat chromium chromium-driver fonts-dejavu-core"
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES
  }
fi
# everything above is installed: the browser tests must run, not skip
export CI="${CI:-1}"

echo "== installing the project and its test dependencies"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
"$PYTHON" -m ruff check .
echo "== mypy"
"$PYTHON" -m mypy
echo "== pytest"
"$PYTHON" -m pytest -q "$@"
