# Demo recipe: Debian 12 with Debian's own OCaml ({{ocaml_version}}) and
# opam ({{opam_version}}) from the Debian mirror, built for each arch on a
# debootstrapped parent of that arch (arm64 by emulation).
FROM {{parent}}@{{parent_digest}}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ocaml-nox opam gcc libc6-dev binutils \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}"
