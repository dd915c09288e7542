# Demo recipe: busybox with stand-ins for `ocaml` and `opam` that print the
# catalogue's versions (production recipes run `opam switch create`). The
# build, smoke test, push, index and publication are the production path.
FROM {{parent}}@{{parent_digest}}
RUN mkdir -p /usr/local/bin \
 && printf '#!/bin/sh\necho "The OCaml toplevel, version {{ocaml_version}}"\n' > /usr/local/bin/ocaml \
 && printf '#!/bin/sh\necho "{{opam_version}}"\n' > /usr/local/bin/opam \
 && chmod 755 /usr/local/bin/ocaml /usr/local/bin/opam
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}"
