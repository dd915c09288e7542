#!/bin/sh
# Kiln recipe: provision a macOS base dataset tree for OCaml {{ocaml_version}}.
# Runs as the build user with HOME on the `home` child dataset and Homebrew's
# prefix on the `brew` child ({{brew_prefix}}). Kiln snapshots the tree
# afterwards, smoke-tests `ocaml -version` through ~/.profile, and ships it
# as a `zfs send` stream.
set -eu
: "${HOME:?}"
BREW={{brew_prefix}}
if [ ! -x "$BREW/bin/brew" ]; then
    git clone --depth 1 https://github.com/Homebrew/brew "$BREW"
fi
export PATH="$BREW/bin:$BREW/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
export HOMEBREW_NO_AUTO_UPDATE=1 HOMEBREW_NO_ANALYTICS=1 HOMEBREW_NO_INSTALL_CLEANUP=1
brew update --quiet
brew install --quiet gpatch gmp pkgconf opam
opam init -y --bare --disable-sandboxing \
    https://github.com/ocaml/opam-repository.git#{{opam_repository_commit}}
opam switch create -y {{ocaml_series}} --packages={{opam_packages}}
opam clean -a -c -s --logs
cat > "$HOME/.profile" <<PROFILE
export PATH="$BREW/bin:$BREW/sbin:\$PATH"
eval "\$(opam env --switch={{ocaml_series}} --set-switch)"
PROFILE
