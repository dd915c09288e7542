#!/usr/bin/env bash
# README's first command: bring the services up and run Kiln's main job on
# its embedded defaults, then show the result.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/services.sh up
echo
echo "== building kiln"
cargo build --release --locked -q
KILN=$ROOT/target/release/kiln
[ -n "${CARGO_TARGET_DIR:-}" ] && KILN=$CARGO_TARGET_DIR/release/kiln
echo
echo "== kiln doctor"
"$KILN" doctor
