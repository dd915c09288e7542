# Kiln recipe, pacman family (Arch Linux): the two-stage shape of the
# ocaml/opam images. Rendered per target (for {{os}}/{{arch}}; its `opam` stage
# alone is the compiler-less `<os>-opam` image);
# the rendered bytes are part of the build key. The parent is always pinned
# by digest.
FROM {{parent}}@{{parent_digest}} AS opam
RUN pacman -Syu --noconfirm --needed \
      base-devel ca-certificates curl git unzip bubblewrap rsync patch m4 \
      pkgconf sudo libcap darcs mercurial \
 && pacman -Scc --noconfirm
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
