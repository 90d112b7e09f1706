#!/usr/bin/env bash
# Puts `egressd` on PATH: a symbolic link /usr/local/bin/egressd (or
# $EGRESSD_BIN_DIR/egressd) to the built CLI of this tree, or to the file given
# as the first argument. Safe to run again: the link is replaced. A file there
# that is not a symbolic link is left alone (and reported).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-$PWD/dist/cli/main.js}
bin_dir=${EGRESSD_BIN_DIR:-/usr/local/bin}
link=$bin_dir/egressd
if [[ ! -f $target ]]; then
  echo "link-cli: $target is missing: build first (bash scripts/build.sh)" >&2
  exit 1
fi
if [[ -e $link && ! -L $link ]]; then
  echo "link-cli: $link exists and is not a symbolic link: left alone; remove it to link egressd there" >&2
  exit 1
fi
mkdir -p "$bin_dir"
chmod +x "$target"
ln -sfn "$target" "$link"
echo "link-cli: $link -> $target"
