#!/bin/sh
# Kiln recipe: provision a macOS base dataset tree for OCaml {{ocaml_version}}.
# Runs as the build user with HOME on the `home` child dataset and Homebrew's
# prefix on the `brew` child ({{brew_prefix}}). Lays the tree out as
# obuilder's macOS workers expect: opam 2.x binaries side by side as
# ~/local/bin/opam-2.x, a clone of opam-repository, an opam root initialised
# for the target compiler, and ~/.obuilder_profile.sh, which obuilder sources
# before every step. Kiln snapshots the tree afterwards, smoke-tests
# `ocaml -version` through that profile, and ships it as a `zfs send` stream.
set -eu
: "${HOME:?}"
BREW={{brew_prefix}}
if [ ! -x "$BREW/bin/brew" ]; then
    git clone --depth 1 https://github.com/Homebrew/brew "$BREW"
fi
export PATH="$HOME/local/bin:$BREW/bin:$BREW/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
export HOMEBREW_NO_AUTO_UPDATE=1 HOMEBREW_NO_ANALYTICS=1 HOMEBREW_NO_INSTALL_CLEANUP=1
brew update --quiet
brew install --quiet gpatch gmp pkgconf

# opam 2.x: every release binary as opam-2.x; `opam` is the newest.
mkdir -p "$HOME/local/bin"
newest=""
for v in {{opam_releases}}; do
    minor=${v%.*}
    bin="$HOME/local/bin/opam-$minor"
    curl -fsSL -o "$bin.part" \
        "https://github.com/ocaml/opam/releases/download/$v/opam-$v-{{opam_arch}}-macos"
    chmod 755 "$bin.part"
    mv "$bin.part" "$bin"
    newest="opam-$minor"
done
ln -sf "$newest" "$HOME/local/bin/opam"

# opam-repository at the pinned commit, and an opam root for the compiler.
if [ ! -d "$HOME/opam-repository/.git" ]; then
    git clone https://github.com/ocaml/opam-repository.git "$HOME/opam-repository"
fi
git -C "$HOME/opam-repository" fetch --quiet origin {{opam_repository_commit}}
git -C "$HOME/opam-repository" checkout --quiet --detach {{opam_repository_commit}}
opam init -y --bare --disable-sandboxing "$HOME/opam-repository"
opam switch create -y {{ocaml_series}} --packages={{opam_packages}}
opam clean -a -c -s --logs

cat > "$HOME/.obuilder_profile.sh" <<PROFILE
export PATH="\$HOME/local/bin:$BREW/bin:$BREW/sbin:\$PATH"
export HOMEBREW_NO_AUTO_UPDATE=1
eval "\$(opam env --switch={{ocaml_series}} --set-switch)"
PROFILE
