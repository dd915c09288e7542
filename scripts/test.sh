#!/usr/bin/env bash
# The test command (README's second command, and what CI runs): bring up the
# real services the tests talk to, then run the whole test suite.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/services.sh up
cargo test --locked "$@"
