# Demo recipe: the ocaml/opam image layout (docker-base-images' apt family,
# see platforms/linux/apt.Dockerfile for the production recipe) on Debian 12,
# with OCaml {{ocaml_version}} compiled from source by `opam switch create`.
# Every input comes from Kiln's source mirror at {{sources_url}} or from
# Debian's package mirror; nothing from GitHub. Deliberate differences from
# upstream, each for a reason:
# - opam is Debian's package (2.1.2), installed as /usr/bin/opam-2.1 with
#   `opam` a hard link to it, instead of opam 2.1–2.5 built from source:
#   the opam sources are not reachable here;
# - the opam-repository is the demo's own (Debian's source tarball of OCaml
#   as the compiler archive), cloned from the mirror's bundle of the pinned
#   commit, with no `origin` (it has no public home);
# - archive-mirrors points at the build's source server while the switch is
#   created, then at opam.ocaml.org's cache as upstream leaves it;
# - no ocaml-patches-overlay and no opam-depext (not in the demo repository).
FROM {{parent}}@{{parent_digest}}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential ca-certificates curl git \
      unzip bubblewrap rsync patch m4 pkg-config sudo passwd libcap-dev xz-utils opam \
 && rm -rf /var/lib/apt/lists/*
# opam side by side as /usr/bin/opam-2.x, `opam` a hard link to the default.
RUN mv /usr/bin/opam /usr/bin/opam-2.1 && ln /usr/bin/opam-2.1 /usr/bin/opam
# The opam user: uid 1000 (a distro user holding it is removed first, as
# upstream does for ubuntu:24.04's `ubuntu`), passwordless sudo.
RUN if u=$(getent passwd 1000 | cut -d: -f1) && [ -n "$u" ]; then userdel -r "$u"; fi \
 && useradd -m -s /bin/bash -u 1000 opam \
 && printf 'opam ALL=(ALL:ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/opam \
 && chmod 440 /etc/sudoers.d/opam && chown root:root /etc/sudoers.d/opam \
 && sed -i.bak 's/^Defaults.*requiretty//g' /etc/sudoers
USER opam
WORKDIR /home/opam
# opam-sandbox-enable / opam-sandbox-disable, as upstream's images have them.
RUN mkdir -m 700 .ssh \
 && printf 'wrap-build-commands: []\nwrap-install-commands: []\nwrap-remove-commands: []\nrequired-tools: []\n' > .opamrc-nosandbox \
 && printf 'wrap-build-commands: ["%%{hooks}%%/sandbox.sh" "build"]\nwrap-install-commands: ["%%{hooks}%%/sandbox.sh" "install"]\nwrap-remove-commands: ["%%{hooks}%%/sandbox.sh" "remove"]\n' > .opamrc-sandbox \
 && printf '#!/bin/sh\ncp ~/.opamrc-nosandbox ~/.opamrc\necho --- opam sandboxing disabled\n' > opam-sandbox-disable \
 && printf '#!/bin/sh\ncp ~/.opamrc-sandbox ~/.opamrc\necho --- opam sandboxing enabled\n' > opam-sandbox-enable \
 && chmod a+x opam-sandbox-disable opam-sandbox-enable \
 && sudo mv opam-sandbox-disable opam-sandbox-enable /usr/bin/ \
 && git config --global user.email "docker@example.com" && git config --global user.name "Docker"
# ~/opam-repository: a git checkout at the pinned commit, opam initialised from it.
RUN curl -fsS -o /tmp/opam-repository.bundle {{sources_url}}/opam-repository.bundle \
 && git clone --quiet /tmp/opam-repository.bundle opam-repository && rm /tmp/opam-repository.bundle \
 && git -C opam-repository checkout --quiet {{opam_repository_commit}} \
 && git -C opam-repository remote remove origin \
 && opam-sandbox-disable \
 && opam init -k git -a /home/opam/opam-repository --bare \
 && rm -rf .opam/repo/default/.git
ENV OPAMYES="1" OPAMCONFIRMLEVEL="unsafe-yes" OPAMERRLOGLEN="0" OPAMPRECISETRACKING="1"
# The default switch, named by its series as upstream names it; the
# compiler archive comes from the source mirror, found by its checksum.
RUN echo 'archive-mirrors: "{{sources_url}}/opam-cache"' >> .opam/config \
 && opam switch create {{ocaml_series}} --packages={{opam_packages}} \
 && sed -i '/^archive-mirrors:/d' .opam/config \
 && echo 'archive-mirrors: "https://opam.ocaml.org/cache"' >> .opam/config \
 && opam clean -a -c -s --logs
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}"
ENTRYPOINT [ "opam", "exec", "--" ]
CMD [ "bash" ]
