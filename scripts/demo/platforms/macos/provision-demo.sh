#!/bin/sh
# Demo recipe: a Linux-runnable stand-in for Homebrew + opam, laid out as
# the production recipe (platforms/macos/provision.sh) lays out a macOS
# tree: an `ocaml` that prints the catalogue's version in the brew
# dataset's bin, opam 2.x binaries side by side as opam-2.x there with
# `opam` pointing at the default, ~/local linked to the brew prefix, and
# ~/.obuilder_profile.sh with the variables obuilder's jobs rely on. The
# dataset build on the host that owns the pool (over ssh for a remote
# one), reaping, snapshot, smoke test through the profile, streamed send
# and publication are the production path.
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
