#!/bin/sh
# Demo recipe: a Linux-runnable stand-in for Homebrew + opam. It installs
# an `ocaml` that prints the catalogue's version into the brew dataset and
# a profile into the home dataset; the dataset build, reaping, snapshot,
# smoke test through the profile, send stream and publication are the
# production path.
set -eu
mkdir -p "$BREW/bin"
printf '#!/bin/sh\necho "The OCaml toplevel, version {{ocaml_version}}"\n' > "$BREW/bin/ocaml"
chmod 755 "$BREW/bin/ocaml"
echo "export PATH=\"$BREW/bin:\$PATH\"" > "$HOME/.profile"
