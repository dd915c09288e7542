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
#   - opam 2.1 to 2.5 and opam-dev side by side as opam-2.x and opam-dev in
#     the brew prefix's bin, with `opam` a hard link to opam-2.1;
#   - ~/local linked to the brew prefix;
#   - opam-repository cloned in ~ and an opam root for the compiler;
#   - ~/.obuilder_profile.sh, which obuilder sources before every step,
#     with HOMEBREW_DISABLE_LOCKING, OPAMYES and the opam environment;
#   - fseventsd told not to log on the datasets.
# Kiln snapshots the tree afterwards, smoke-tests `ocaml -version` through
# that profile, and ships it as a `zfs send` stream.
#
# Everything but Homebrew comes from Kiln's source mirror at
# {{sources_url}} (the build's server, reached from the worker through a
# reverse forward over Kiln's ssh connection): opam's release tarballs,
# the opam-repository bundle of the pinned commit, and the compiler's
# archives through opam's archive-mirrors. Homebrew itself (its git
# clone) and the brew packages stay with Homebrew's own mirrors, as the
# distro packages of the other platforms do.
#
# Deliberate differences from macos-infra, each for a reason:
#   - opam is built from the declared release tarballs opam-full-2.x.y
#     (pinned by sha256, vendored dependencies inside) instead of the
#     binaries opam's install.sh from master downloads from GitHub, which
#     nothing pins; opam-dev is the newest release (2.6.1), as in Kiln's
#     Docker images, since a branch head cannot be a build input;
#   - opam-repository is the mirror's bundle of the pinned commit, checked
#     against it, with origin set back to GitHub's URL (macos-infra clones
#     GitHub's HEAD): the commit is a build input;
#   - the compiler's archives come from the mirror's opam cache while the
#     switch is built (`archive-mirrors`), and upstream's cache
#     (https://opam.ocaml.org/cache) is written back afterwards, so the
#     tree holds no build-time address;
#   - the switch is named by the full version ({{ocaml_version}}) as
#     macos-infra's `opam init -c VERSION` names it, but created by `opam
#     switch create` with --packages={{opam_packages}}, the catalogue's
#     packages, so that it is the compiler the key says;
#   - ~/.obuilder_profile.sh ends with `eval "$(opam env)"` (the default
#     switch, nothing pinned): obuilder and Kiln's smoke test source that
#     file, not the shell profile opam's `-a` setup writes;
#   - the build user, the sudoers entry and the datasets are made once
#     per worker by the operator and by Kiln (macos-infra recreates the
#     user for each image): Kiln's recipe never runs as root;
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
brew install --quiet gpatch

# opam 2.x from the mirror's release tarballs, installed side by side as
# macos-infra installs its binaries: opam-2.1 … opam-2.5 and opam-dev, with
# `opam` a hard link to opam-2.1 (macos-infra's `ln opam-2.1 opam`).
build_opam() { # <release tarball URL> <installed as> <configure flags>
    dir="$TMPDIR/opam-build-$2"
    rm -rf "$dir" && mkdir -p "$dir"
    curl -fsSL -o "$dir.tar.gz" "$1"
    tar -xzf "$dir.tar.gz" -C "$dir" --strip-components=1
    rm "$dir.tar.gz"
    # $3 is a list of flags.
    # shellcheck disable=SC2086
    (cd "$dir" && PATH="$TMPDIR/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure $3 &&
        PATH="$TMPDIR/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all)
    install -m 755 "$dir/opam" "$BREW/bin/$2"
    rm -rf "$dir"
}
# The bootstrap compiler opam's configure needs, from the newest tarball.
mkdir -p "$TMPDIR/opam-bootstrap"
curl -fsSL -o "$TMPDIR/opam-full-2.5.2.tar.gz" {{sources_url}}/opam-full-2.5.2.tar.gz
tar -xzf "$TMPDIR/opam-full-2.5.2.tar.gz" -C "$TMPDIR/opam-bootstrap" --strip-components=1
rm "$TMPDIR/opam-full-2.5.2.tar.gz"
(cd "$TMPDIR/opam-bootstrap" && make compiler)
build_opam {{sources_url}}/opam-full-2.1.6.tar.gz opam-2.1 "--with-0install-solver"
build_opam {{sources_url}}/opam-full-2.2.1.tar.gz opam-2.2 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.3.0.tar.gz opam-2.3 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.4.1.tar.gz opam-2.4 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.5.2.tar.gz opam-2.5 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.6.1.tar.gz opam-dev "--with-0install-solver --with-vendored-deps"
rm -rf "$TMPDIR/opam-bootstrap"
ln -f "$BREW/bin/opam-2.1" "$BREW/bin/opam"
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

# opam-repository: the mirror's bundle of the pinned commit, checked, with
# origin set back to GitHub's URL for the jobs; and an opam root for the
# compiler.
rm -rf "$HOME/opam-repository"
curl -fsSL -o "$TMPDIR/opam-repository.bundle" {{sources_url}}/opam-repository.bundle
git clone --quiet --branch master "$TMPDIR/opam-repository.bundle" "$HOME/opam-repository"
rm "$TMPDIR/opam-repository.bundle"
git -C "$HOME/opam-repository" remote set-url origin https://github.com/ocaml/opam-repository.git
test "$(git -C "$HOME/opam-repository" rev-parse HEAD)" = "{{opam_repository_commit}}"
# shellcheck disable=SC1091
. "$HOME/.obuilder_profile.sh"
# Sandboxing on, as macos-infra's `opam init` leaves it (sandbox-exec):
# opam-repo-ci relies on it.
opam init -k git -a --bare "$HOME/opam-repository"
# The compiler's archives from the source mirror; the tree keeps upstream's cache.
opam option --global archive-mirrors={{sources_url}}/opam-cache
opam switch create {{ocaml_version}} --packages={{opam_packages}}
opam option --global archive-mirrors=https://opam.ocaml.org/cache
opam clean -a -c -s --logs
# The default switch's environment for whoever sources the profile (Kiln's
# smoke test, obuilder's steps); no switch is pinned. Expanded then, not now.
# shellcheck disable=SC2016
echo 'eval "$(opam env)"' >> "$HOME/.obuilder_profile.sh"

# fseventsd must not log on the datasets: a job's clone would carry its
# journal along (macos-infra does the same).
for dir in "$BREW/.fseventsd" "$HOME/.fseventsd"; do
    rm -rf "$dir"
    mkdir -p "$dir"
    touch "$dir/no_log"
done
