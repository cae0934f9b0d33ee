#!/bin/sh
# Builds the bundle, then checks it the way a user meets it: the bundled app, started offscreen
# from another folder with no Python on PATH and an empty home, opens its window and trains a
# tiny model 3 steps through the bundled engine (`edgetune --smoke`, see app/smoke.py).
# Prints build time, bundle size and cold start. Minutes: not part of the default test run.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
log=$(mktemp)
sh "$root/packaging/build.sh" | tee "$log"
bundle="$root/$(tail -n 1 "$log")"
rm -f "$log"
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
cd "$home"
run() { env -i HOME="$home" PATH=/usr/bin:/bin LANG=C.UTF-8 QT_QPA_PLATFORM=offscreen "$@"; }
started=$(date +%s.%N)
run "$bundle/edgetune" engine --version
echo "smoke: engine --version from the bundle: $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $started }") s"
run "$bundle/edgetune" --smoke
