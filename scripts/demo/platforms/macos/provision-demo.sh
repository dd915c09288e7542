#!/bin/sh
# Demo recipe: a Linux-runnable stand-in for Homebrew + opam. It installs
# an `ocaml` that prints the catalogue's version into the brew dataset, an
# `opam-2.4` with `opam` pointing at it and the obuilder profile into the
# home dataset; the dataset build, reaping, snapshot,
# smoke test through the profile, send stream and publication are the
# production path.
set -eu
mkdir -p "$BREW/bin"
printf '#!/bin/sh\necho "The OCaml toplevel, version {{ocaml_version}}"\n' > "$BREW/bin/ocaml"
chmod 755 "$BREW/bin/ocaml"
mkdir -p "$HOME/local/bin"
printf '#!/bin/sh\necho {{opam_version}}\n' > "$HOME/local/bin/opam-2.4"
chmod 755 "$HOME/local/bin/opam-2.4"
ln -sf opam-2.4 "$HOME/local/bin/opam"
echo "export PATH=\"\$HOME/local/bin:$BREW/bin:\$PATH\"" > "$HOME/.obuilder_profile.sh"
