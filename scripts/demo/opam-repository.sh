#!/usr/bin/env bash
# Make (or bring up to date) the demo's opam repository as a bare git
# repository: scripts/demo/opam-repository/ committed with a fixed author
# and date, so the same tree always gives the same commit. Kiln follows its
# HEAD like it follows ocaml/opam-repository (plan.opam_repository), mirrors
# it as a bundle and serves it to builds.
#   usage: opam-repository.sh [TREE] [GIT_DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TREE=${1:-$ROOT/scripts/demo/opam-repository}
GIT_DIR=${2:-$ROOT/.kiln/demo/opam-repository.git}
export GIT_AUTHOR_NAME=Kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=Kiln GIT_COMMITTER_EMAIL=kiln@localhost
export GIT_AUTHOR_DATE="2021-10-04T00:00:00Z" GIT_COMMITTER_DATE="2021-10-04T00:00:00Z"
if [ ! -f "$GIT_DIR/HEAD" ]; then
    mkdir -p "$GIT_DIR"
    git init --quiet --bare --initial-branch=master "$GIT_DIR"
fi
export GIT_DIR GIT_WORK_TREE=$TREE
INDEX=$(mktemp -u)
trap 'rm -f "$INDEX"' EXIT
export GIT_INDEX_FILE=$INDEX
git add --all .
tree=$(git write-tree)
if head=$(git rev-parse --verify --quiet HEAD) && [ "$(git rev-parse "$head^{tree}")" = "$tree" ]; then
    echo "$head"
    exit 0
fi
parent=()
[ -n "${head:-}" ] && parent=(-p "$head")
commit=$(git commit-tree "$tree" "${parent[@]}" -m "Kiln demo opam repository")
git update-ref refs/heads/master "$commit"
echo "$commit"
