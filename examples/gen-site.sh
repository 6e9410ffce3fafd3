#!/bin/sh
# Builds a small site directory from a list of page names: one HTML file per
# page under pages/, an empty assets/img/ for later, and index.html as a
# link to the first page.
set -eu
src=$1
out=$2
rm -rf "$out"
mkdir -p "$out/pages" "$out/assets/img"
while read -r name; do
    [ -n "$name" ] || continue
    printf '<h1>%s</h1>\n' "$name" > "$out/pages/$name.html"
done < "$src"
ln -s "pages/$(head -n 1 "$src").html" "$out/index.html"
