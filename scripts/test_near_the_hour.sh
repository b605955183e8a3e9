#!/usr/bin/env bash
# The whole suite (or the pytest arguments given) with every test starting beside a boundary of
# the clock (two seconds before it or one second after, in turn; the next hour, for two tests in
# ten midnight, for two in fifty a month's end), each later than the last: finds tests that fail only
# when the wall clock crosses a boundary mid-test or has just crossed one.
# Needs what `make test` needs, plus Debian's faketime (installed here if missing).
# Usage: scripts/test_near_the_hour.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s install browser
LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [ ! -e "$LIB" ]; then
  apt-get install -y -qq faketime >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq faketime >/dev/null; }
fi
[ -e "$LIB" ] || { echo "libfaketime is not at $LIB: cannot fake the clock" >&2; exit 1; }
OFFSETS="$(mktemp)"
trap 'rm -f "$OFFSETS" "$OFFSETS.next"' EXIT
echo "+0s" > "$OFFSETS"  # the plugin replaces it before each test
export FAKETIME_TIMESTAMP_FILE="$OFFSETS" FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1
export PYTHONPATH="$PWD/tests/clock${PYTHONPATH:+:$PYTHONPATH}" DJANGO_SETTINGS_MODULE=config.settings.test
LD_PRELOAD="$LIB" .venv/bin/python -m pytest -p near_the_hour "$@"
