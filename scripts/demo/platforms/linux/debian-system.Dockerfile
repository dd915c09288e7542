# Demo recipe: Debian 12 with Debian's own OCaml ({{ocaml_version}}) and
# opam ({{opam_version}}) from the Debian mirror.
FROM {{parent}}@{{parent_digest}}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ocaml-nox opam \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}"
