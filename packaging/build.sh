#!/bin/sh
# `make package`: dist/EdgeTune-<version>-linux-x86_64/ (PyInstaller, onedir) with its desktop
# entry, icon and installer beside the executable, and the same folder as a .tar.gz.
# The last line printed names the bundle folder (packaging/smoke.sh reads it).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=.venv/bin/python  # made by `make setup`
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
name="EdgeTune-$version-linux-x86_64"
started=$(date +%s)
"$python" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/edgetune.spec
cp packaging/edgetune.desktop packaging/install-desktop-entry.sh resources/icons/edgetune.png "dist/$name/"
tar -C dist -czf "dist/$name.tar.gz" "$name"
echo "build: $(($(date +%s) - started)) s; folder $(du -sm "dist/$name" | cut -f1) MiB," \
     "archive $(du -sm "dist/$name.tar.gz" | cut -f1) MiB"
echo "dist/$name"
