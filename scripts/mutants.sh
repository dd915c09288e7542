#!/usr/bin/env bash
# Mutation testing of the pure decisions (issue #33): cargo-mutants breaks
# each of the files below in every way it knows (a function returning a
# default, `==` made `!=`, a match guard made `true`…) and runs the
# library's unit tests (`cargo test --lib`) against each break. A break
# no test notices is "missed": some decision is not pinned by a test.
#
#   bash scripts/mutants.sh                # every mutant of the files below
#   bash scripts/mutants.sh -F 'gate\.rs'   # only those whose name matches
#   bash scripts/mutants.sh --list         # what it would test, untested
#
# It installs cargo-mutants if missing, prints caught / missed / unviable
# per file and in all, lists the missed ones, and fails when fewer than
# KILN_MUTANTS_MIN percent (default 90) of the viable mutants are caught.
# Takes about 20 s per mutant on 2 cores; not part of .ci/run. Run it
# before resolving an issue that touches these files.
#
# Mutants judged equivalent (no test could tell them apart from the code)
# are excluded in .cargo/mutants.toml, each with its reason; nothing is
# skipped anywhere else.
#
# Mutants are tested in place (reusing target/, so only Kiln rebuilds):
# the files are saved first and put back on exit, even if interrupted, so
# do not edit them while it runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# The pure decision modules: whether a tag is unchanged, reused or rebuilt
# and how an arch stands; the availability gate; build keys; the tags a
# plan publishes; the queue's retry policy; who owns each moving tag.
FILES=(
    src/pipeline/decide.rs
    src/api/gate.rs
    src/plan/key.rs
    src/plan/tags.rs
    src/state/retry.rs
    src/publish/owners.rs
)
MIN=${KILN_MUTANTS_MIN:-90}

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "cargo-mutants is missing: installing it"
    cargo install --locked cargo-mutants
fi

args=()
for f in "${FILES[@]}"; do
    args+=(--file "$f")
done
for a in "$@"; do
    case $a in
    --list | --list-files) exec cargo mutants "${args[@]}" "$@" ;;
    esac
done

TARGET=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET=${TARGET:-${CARGO_TARGET_DIR:-$ROOT/target}}
OUT=$TARGET/mutants.out

SAVED=$(mktemp -d)
restore() {
    for f in "${FILES[@]}"; do
        cmp -s "$SAVED/$f" "$f" || cp "$SAVED/$f" "$f"
    done
    rm -rf "$SAVED"
}
for f in "${FILES[@]}"; do
    mkdir -p "$SAVED/$(dirname "$f")"
    cp "$f" "$SAVED/$f"
done
trap restore EXIT

status=0
# --cargo-arg, not `-- --lib`: the build of each mutant is then the
# library's tests alone too, not every integration test binary.
cargo mutants --in-place --no-shuffle --output "$TARGET" --cargo-arg=--lib \
    "${args[@]}" "$@" || status=$?
# 0: all caught, 2: some missed, 3: some timed out; anything else means
# no mutant was judged (1: bad arguments, 4: the unmutated tests fail).
case $status in
0 | 2 | 3) ;;
*)
    echo "cargo mutants failed (exit $status) before judging the mutants" >&2
    exit "$status"
    ;;
esac

# How many mutants of `file` (of every file when empty) had `outcome`.
count() { # outcome file
    local list=$OUT/$1.txt
    [ -f "$list" ] || { echo 0; return; }
    awk -F: -v f="$2" 'f == "" || $1 == f' "$list" | wc -l | tr -d ' '
}
printf '%-26s %7s %7s %8s %9s\n' file caught missed timeout unviable
for f in "${FILES[@]}" ""; do
    printf '%-26s %7s %7s %8s %9s\n' "${f:-all}" "$(count caught "$f")" \
        "$(count missed "$f")" "$(count timeout "$f")" "$(count unviable "$f")"
done
# A mutant that made the tests hang (timeout) counts as not caught.
caught=$(count caught "")
viable=$((caught + $(count missed "") + $(count timeout "")))
if [ -s "$OUT/missed.txt" ]; then
    echo "missed:"
    sed 's/^/  /' "$OUT/missed.txt"
fi
if [ "$viable" -eq 0 ]; then
    echo "no viable mutant was tested" >&2
    exit 1
fi
echo "caught $caught of $viable viable mutants ($((100 * caught / viable))%; at least $MIN% required)"
if [ $((100 * caught)) -lt $((MIN * viable)) ]; then
    echo "FAIL: below $MIN%: pin the missed decisions with tests, or exclude a mutant that is equivalent in .cargo/mutants.toml with its reason" >&2
    exit 1
fi
