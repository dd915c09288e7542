#!/bin/sh
# Demo recipe: a Linux-runnable stand-in for Homebrew + opam, laid out as
# the production recipe (platforms/macos/provision.sh) lays out a macOS
# tree: an `ocaml` that prints the catalogue's version in the brew
# dataset's bin, opam 2.x binaries side by side as opam-2.x there with
# `opam` pointing at the default, ~/local linked to the brew prefix, and
# ~/.obuilder_profile.sh with the variables obuilder's jobs rely on. The
# dataset build on the host that owns the pool (over ssh for a remote
# one), reaping, snapshot, smoke test through the profile, streamed send
# and publication are the production path. So is the source mirror: the
# opam-repository comes from Kiln's per-build server at {{sources_url}}
# (this machine's loopback, or a reverse forward over the build's ssh
# connection on a remote host) as the bundle of the pinned commit, cloned
# and checked as the production recipe does.
set -eu
: "${HOME:?}" "${BREW:?}"
mkdir -p "$BREW/bin"
printf '#!/bin/sh\necho "The OCaml toplevel, version {{ocaml_version}}"\n' > "$BREW/bin/ocaml"
chmod 755 "$BREW/bin/ocaml"
for minor in 2.3 2.4; do
    printf '#!/bin/sh\necho %s\n' "$minor.0" > "$BREW/bin/opam-$minor"
    chmod 755 "$BREW/bin/opam-$minor"
done
printf '#!/bin/sh\necho {{opam_version}}\n' > "$BREW/bin/opam-2.4"
ln -sf opam-2.4 "$BREW/bin/opam"
ln -sfn "$BREW" "$HOME/local"
cat > "$HOME/.obuilder_profile.sh" <<PROFILE
export HOMEBREW_DISABLE_LOCKING=1
export HOMEBREW_NO_AUTO_UPDATE=1
export PATH=$BREW/bin:$BREW/sbin:\$PATH
export OPAMYES=1
export OPAMCONFIRMLEVEL=unsafe-yes
PROFILE
echo "built for OCaml {{ocaml_version}}" > "$HOME/README.kiln"
curl -fsS -o "$HOME/opam-repository.bundle" "{{sources_url}}/opam-repository.bundle"
git clone --quiet --branch master "$HOME/opam-repository.bundle" "$HOME/opam-repository"
rm "$HOME/opam-repository.bundle"
git -C "$HOME/opam-repository" remote set-url origin https://github.com/ocaml/opam-repository.git
head=$(git -C "$HOME/opam-repository" rev-parse HEAD)
if [ "$head" != "{{opam_repository_commit}}" ]; then
    echo "opam-repository from the source mirror is at $head, not {{opam_repository_commit}}" >&2
    exit 1
fi
echo "opam-repository at $head from {{sources_url}}"
