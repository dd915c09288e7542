# Kiln recipe, apt family (Debian, Ubuntu): the two-stage shape of the
# ocaml/opam images. Rendered per target (for {{os}}/{{arch}}; its `opam` stage
# alone is the compiler-less `<os>-opam` image);
# the rendered bytes are part of the build key. The parent is always pinned
# by digest.
FROM {{parent}}@{{parent_digest}} AS opam
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential ca-certificates curl git unzip bubblewrap rsync patch m4 \
      pkg-config sudo libcap-dev darcs mercurial \
 && rm -rf /var/lib/apt/lists/*
RUN curl -fsSL -o /usr/local/bin/opam \
      https://github.com/ocaml/opam/releases/download/{{opam_version}}/opam-{{opam_version}}-{{opam_arch}}-linux \
 && chmod 755 /usr/local/bin/opam \
 && useradd -m -s /bin/bash -u 1000 opam \
 && echo 'opam ALL=(ALL:ALL) NOPASSWD:ALL' > /etc/sudoers.d/opam && chmod 440 /etc/sudoers.d/opam
USER opam
WORKDIR /home/opam
RUN opam init -y --disable-sandboxing --bare \
      https://github.com/ocaml/opam-repository.git#{{opam_repository_commit}}

FROM opam AS compiler
RUN opam switch create -y {{ocaml_series}} --packages={{opam_packages}} \
 && opam clean -a -c -s --logs
ENV OPAMYES=1 OPAMCONFIRMLEVEL=unsafe-yes OPAMERRLOGLEN=0 OPAMPRECISETRACKING=1
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}/{{variant}}"
ENTRYPOINT ["opam", "exec", "--"]
CMD ["bash"]
