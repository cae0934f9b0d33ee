#!/bin/sh
# Adds EdgeTune to the desktop menu: edgetune.desktop, pointing at the executable in this folder,
# into ~/.local/share/applications and the icon into the user's hicolor theme. Run it again after
# moving the folder. To remove: delete those two files.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
mkdir -p "$data/applications" "$data/icons/hicolor/256x256/apps"
cp "$here/edgetune.png" "$data/icons/hicolor/256x256/apps/edgetune.png"
# Exec needs an absolute path (the folder is not on PATH), quoted in case it holds spaces.
sed "s|^Exec=.*|Exec=\"$here/edgetune\"|" "$here/edgetune.desktop" > "$data/applications/edgetune.desktop"
if command -v update-desktop-database >/dev/null 2>&1; then
    update-desktop-database "$data/applications" || true
fi
echo "installed $data/applications/edgetune.desktop"
