# Demo install script, run by the test guest with ROOT set to the system
# being installed (production: OpenBSD's install.site with pkg_add and
# `opam switch create`). Installs a stand-in `ocaml` printing the
# catalogue's version.
mkdir -p "$ROOT/bin"
printf '#!/bin/sh\necho "The OCaml toplevel, version {{ocaml_version}}"\n' > "$ROOT/bin/ocaml"
chmod 755 "$ROOT/bin/ocaml"
