#!/bin/sh
# Kiln recipe: provision a macOS base dataset tree for OCaml {{ocaml_version}}.
#
# Kiln runs this on the macOS worker that owns the pool, over ssh, as the
# build user through `sudo -n -H -u` (HOME is the `home` child dataset,
# mounted on the user's home; BREW is the `brew` child, mounted on
# Homebrew's prefix {{brew_prefix}}). It lays the tree out as
# ocurrent/macos-infra's base-image role does, which is what obuilder's
# macOS jobs expect:
#   - Homebrew in {{brew_prefix}}, with GNU patch (opam needs it);
#   - the opam 2.x release binaries side by side as opam-2.x in the brew
#     prefix's bin, with `opam` pointing at the default one;
#   - ~/local linked to the brew prefix;
#   - opam-repository cloned in ~ and an opam root for the compiler;
#   - ~/.obuilder_profile.sh, which obuilder sources before every step,
#     with HOMEBREW_DISABLE_LOCKING, OPAMYES and the opam environment;
#   - fseventsd told not to log on the datasets.
# Kiln snapshots the tree afterwards, smoke-tests `ocaml -version` through
# that profile, and ships it as a `zfs send` stream.
#
# Deliberate differences from macos-infra, each for a reason:
#   - the opam binaries come from the release URLs of exact versions
#     ({{opam_releases}}) instead of opam's install.sh from master, and
#     opam-repository is checked out at the pinned commit: both are build
#     inputs, so the tree is a function of its build key;
#   - the switch is named after the series ({{ocaml_series}}) and created
#     with --packages={{opam_packages}} (macos-infra: `opam init -c
#     VERSION`), as in every other Kiln image, so a job's `opam switch`
#     looks the same on every platform;
#   - the build user, the sudoers entry and the datasets are made once
#     per worker by the operator and by Kiln (macos-infra recreates the
#     user for each image): Kiln's recipe never runs as root;
#   - no `opam-dev` binary: a moving target cannot be part of a keyed image.
set -eu
: "${HOME:?}" "${BREW:?}"
# /tmp is not writable for the build user on the workers.
TMPDIR=$(getconf DARWIN_USER_TEMP_DIR 2>/dev/null || echo "$HOME/tmp")
mkdir -p "$TMPDIR"
export TMPDIR
export NONINTERACTIVE=1 HOMEBREW_NO_AUTO_UPDATE=1 HOMEBREW_NO_ANALYTICS=1 \
    HOMEBREW_NO_INSTALL_CLEANUP=1 HOMEBREW_DISABLE_LOCKING=1
if [ ! -x "$BREW/bin/brew" ]; then
    git clone --depth 1 https://github.com/Homebrew/brew "$BREW"
fi
export PATH="$BREW/bin:$BREW/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
brew update --quiet
brew install --quiet gpatch gmp pkgconf

# opam 2.x: every release binary as opam-2.x; `opam` is the default (the
# newest listed), as macos-infra's `ln opam-2.x opam`.
default=""
for v in {{opam_releases}}; do
    minor=${v%.*}
    bin="$BREW/bin/opam-$minor"
    curl -fsSL -o "$bin.part" \
        "https://github.com/ocaml/opam/releases/download/$v/opam-$v-{{opam_arch}}-macos"
    chmod 755 "$bin.part"
    mv "$bin.part" "$bin"
    default="opam-$minor"
done
ln -sf "$default" "$BREW/bin/opam"
opam --version

# ~/local is the brew prefix, as macos-infra links it.
ln -sfn "$BREW" "$HOME/local"

cat > "$HOME/.obuilder_profile.sh" <<PROFILE
export HOMEBREW_DISABLE_LOCKING=1
export HOMEBREW_NO_AUTO_UPDATE=1
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export PATH=$BREW/bin:$BREW/sbin:\$PATH
export OPAMYES=1
export OPAMCONFIRMLEVEL=unsafe-yes
export OPAMERRLOGLEN=0
export OPAMPRECISETRACKING=1
PROFILE

# opam-repository at the pinned commit, and an opam root for the compiler.
if [ ! -d "$HOME/opam-repository/.git" ]; then
    git clone https://github.com/ocaml/opam-repository.git "$HOME/opam-repository"
fi
git -C "$HOME/opam-repository" fetch --quiet origin {{opam_repository_commit}}
git -C "$HOME/opam-repository" checkout --quiet --detach {{opam_repository_commit}}
# shellcheck disable=SC1091
. "$HOME/.obuilder_profile.sh"
opam init -k git -a --bare --disable-sandboxing "$HOME/opam-repository"
opam switch create {{ocaml_series}} --packages={{opam_packages}}
opam clean -a -c -s --logs
# Expanded when a job sources the profile, not now.
# shellcheck disable=SC2016
echo 'eval "$(opam env --switch={{ocaml_series}} --set-switch)"' >> "$HOME/.obuilder_profile.sh"

# fseventsd must not log on the datasets: a job's clone would carry its
# journal along (macos-infra does the same).
for dir in "$BREW/.fseventsd" "$HOME/.fseventsd"; do
    rm -rf "$dir"
    mkdir -p "$dir"
    touch "$dir/no_log"
done
