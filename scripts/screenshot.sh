#!/usr/bin/env bash
# Save a screenshot of the status page in headless Chromium (Debian's
# `chromium`), checking that the page renders without JavaScript.
#   bash scripts/screenshot.sh [URL] [OUT.png]
set -euo pipefail
URL=${1:-http://127.0.0.1:8080/}
OUT=${2:-.kiln/status.png}
command -v chromium >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
mkdir -p "$(dirname "$OUT")"
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-javascript --user-data-dir="$PROFILE" --window-size=1400,900 \
    --screenshot="$OUT" "$URL" >/dev/null 2>&1
[ -s "$OUT" ] || { echo "screenshot: no image written for $URL" >&2; exit 1; }
echo "screenshot: $OUT ($URL)"
