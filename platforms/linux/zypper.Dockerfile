# Kiln recipe, zypper family (openSUSE Leap, Tumbleweed): the ocaml/opam layout of docker-base-images
# (e18903f), whose generated Dockerfiles this recipe follows step by step
# (tests/recipes_upstream.rs compares them). Rendered per target
# (for {{os}}/{{arch}}; its `opam` stage alone is the compiler-less
# `<os>-opam` image); the rendered bytes are part of the build key.
# The parent is always pinned by digest.
#
# Hermetic: every download comes from Kiln's per-build sources server
# ({{sources_url}}: the files of versions/sources.yaml, checked by sha256,
# the opam-repository bundle and the opam archive cache); only the distro's
# package mirror is reached besides. Written for Docker's classic builder:
# no heredocs and no `COPY --link`, so files upstream writes with a heredoc
# are written with printf here (same path, owner and content).
#
# Each deliberate difference from upstream's Dockerfile is a comment
# `# difference(<name>): <why>` on the step it concerns; the test knows each
# name, so a difference without one fails it.

# Stage 1: opam 2.1 to 2.5 and opam-dev, built from source.
FROM {{parent}}@{{parent_digest}} AS opam-builder
SHELL {{personality_shell}}
LABEL distro_style="zypper"
RUN zypper repos repo-openh264 && zypper removerepo repo-openh264 || true
RUN zypper update -y
RUN zypper install --force-resolution -y -t pattern devel_C_C++
RUN zypper repos repo-openh264 && zypper removerepo repo-openh264 || true
RUN zypper update -y
RUN zypper install --force-resolution -y sudo git unzip curl gcc-c++ libcap-devel xz libX11-devel bzip2 which rsync gzip openssl tar
# difference(opam-from-release-tarballs): upstream clones github.com/ocaml/opam
# and builds the heads of its 2.1 to 2.5 branches with a compiler bootstrapped
# from master; Kiln builds the release tarballs opam-full-2.x.y (declared with
# their sha256 in versions/sources.yaml; they carry the vendored dependencies
# and the bootstrap compiler's source), so no step needs GitHub and the
# image says which opam it holds. The bootstrap compiler comes from the newest.
RUN mkdir -p /tmp/opam-bootstrap && cd /tmp/opam-bootstrap \
 && curl -fsSL -o /tmp/opam-full-2.5.2.tar.gz {{sources_url}}/opam-full-2.5.2.tar.gz \
 && tar -xzf /tmp/opam-full-2.5.2.tar.gz --strip-components=1 && rm /tmp/opam-full-2.5.2.tar.gz \
 && env MAKE='make -j' make compiler
RUN mkdir -p /tmp/opam-build-2.1 && cd /tmp/opam-build-2.1 \
 && curl -fsSL -o /tmp/opam-full-2.1.6.tar.gz {{sources_url}}/opam-full-2.1.6.tar.gz \
 && tar -xzf /tmp/opam-full-2.1.6.tar.gz --strip-components=1 && rm /tmp/opam-full-2.1.6.tar.gz \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure --enable-cold-check --with-0install-solver \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all \
 && mkdir -p /usr/bin && cp /tmp/opam-build-2.1/opam /usr/bin/opam-2.1 && chmod a+x /usr/bin/opam-2.1 \
 && cd / && rm -rf /tmp/opam-build-2.1
RUN mkdir -p /tmp/opam-build-2.2 && cd /tmp/opam-build-2.2 \
 && curl -fsSL -o /tmp/opam-full-2.2.1.tar.gz {{sources_url}}/opam-full-2.2.1.tar.gz \
 && tar -xzf /tmp/opam-full-2.2.1.tar.gz --strip-components=1 && rm /tmp/opam-full-2.2.1.tar.gz \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure --enable-cold-check --with-0install-solver --with-vendored-deps \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all \
 && mkdir -p /usr/bin && cp /tmp/opam-build-2.2/opam /usr/bin/opam-2.2 && chmod a+x /usr/bin/opam-2.2 \
 && cd / && rm -rf /tmp/opam-build-2.2
RUN mkdir -p /tmp/opam-build-2.3 && cd /tmp/opam-build-2.3 \
 && curl -fsSL -o /tmp/opam-full-2.3.0.tar.gz {{sources_url}}/opam-full-2.3.0.tar.gz \
 && tar -xzf /tmp/opam-full-2.3.0.tar.gz --strip-components=1 && rm /tmp/opam-full-2.3.0.tar.gz \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure --enable-cold-check --with-0install-solver --with-vendored-deps \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all \
 && mkdir -p /usr/bin && cp /tmp/opam-build-2.3/opam /usr/bin/opam-2.3 && chmod a+x /usr/bin/opam-2.3 \
 && cd / && rm -rf /tmp/opam-build-2.3
RUN mkdir -p /tmp/opam-build-2.4 && cd /tmp/opam-build-2.4 \
 && curl -fsSL -o /tmp/opam-full-2.4.1.tar.gz {{sources_url}}/opam-full-2.4.1.tar.gz \
 && tar -xzf /tmp/opam-full-2.4.1.tar.gz --strip-components=1 && rm /tmp/opam-full-2.4.1.tar.gz \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure --enable-cold-check --with-0install-solver --with-vendored-deps \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all \
 && mkdir -p /usr/bin && cp /tmp/opam-build-2.4/opam /usr/bin/opam-2.4 && chmod a+x /usr/bin/opam-2.4 \
 && cd / && rm -rf /tmp/opam-build-2.4
RUN mkdir -p /tmp/opam-build-2.5 && cd /tmp/opam-build-2.5 \
 && curl -fsSL -o /tmp/opam-full-2.5.2.tar.gz {{sources_url}}/opam-full-2.5.2.tar.gz \
 && tar -xzf /tmp/opam-full-2.5.2.tar.gz --strip-components=1 && rm /tmp/opam-full-2.5.2.tar.gz \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure --enable-cold-check --with-0install-solver --with-vendored-deps \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all \
 && mkdir -p /usr/bin && cp /tmp/opam-build-2.5/opam /usr/bin/opam-2.5 && chmod a+x /usr/bin/opam-2.5 \
 && cd / && rm -rf /tmp/opam-build-2.5
# difference(opam-dev-is-a-release): upstream's opam-dev is the head of opam's
# master branch, which moves and pins nothing; a master commit would also need
# its vendored dependencies downloaded. Kiln's opam-dev is the newest opam
# release past 2.5, from its opam-full tarball with a published sha256.
RUN mkdir -p /tmp/opam-build-dev && cd /tmp/opam-build-dev \
 && curl -fsSL -o /tmp/opam-full-2.6.1.tar.gz {{sources_url}}/opam-full-2.6.1.tar.gz \
 && tar -xzf /tmp/opam-full-2.6.1.tar.gz --strip-components=1 && rm /tmp/opam-full-2.6.1.tar.gz \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure --enable-cold-check --with-0install-solver --with-vendored-deps \
 && env PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" make lib-ext all \
 && mkdir -p /usr/bin && cp /tmp/opam-build-dev/opam /usr/bin/opam-dev && chmod a+x /usr/bin/opam-dev \
 && cd / && rm -rf /tmp/opam-build-dev

# Stage 2: the image (alone, the compiler-less `<os>-opam` image).
FROM {{parent}}@{{parent_digest}} AS opam
SHELL {{personality_shell}}
RUN zypper repos repo-openh264 && zypper removerepo repo-openh264 || true
RUN zypper update -y
RUN zypper install --force-resolution -y -t pattern devel_C_C++
RUN zypper repos repo-openh264 && zypper removerepo repo-openh264 || true
RUN zypper update -y
RUN zypper install --force-resolution -y sudo git unzip curl gcc-c++ libcap-devel xz libX11-devel bzip2 which rsync gzip openssl tar bubblewrap
COPY --from=opam-builder /usr/bin/opam-2.1 /usr/bin/opam-2.1
RUN ln /usr/bin/opam-2.1 /usr/bin/opam
COPY --from=opam-builder /usr/bin/opam-2.2 /usr/bin/opam-2.2
COPY --from=opam-builder /usr/bin/opam-2.3 /usr/bin/opam-2.3
COPY --from=opam-builder /usr/bin/opam-2.4 /usr/bin/opam-2.4
COPY --from=opam-builder /usr/bin/opam-2.5 /usr/bin/opam-2.5
COPY --from=opam-builder /usr/bin/opam-dev /usr/bin/opam-dev
RUN useradd -u 1000 -d /home/opam -m --user-group opam
RUN echo 'opam ALL=(ALL:ALL) NOPASSWD:ALL' > /etc/sudoers.d/opam
RUN chmod 440 /etc/sudoers.d/opam
RUN chown root:root /etc/sudoers.d/opam
USER opam
WORKDIR /home/opam
RUN mkdir .ssh
RUN chmod 700 .ssh
RUN printf '%s\n' 'wrap-build-commands: []' 'wrap-install-commands: []' \
      'wrap-remove-commands: []' 'required-tools: []' > /home/opam/.opamrc-nosandbox
RUN printf '%s\n' '#!/bin/sh' 'cp ~/.opamrc-nosandbox ~/.opamrc' \
      'echo --- opam sandboxing disabled' > /home/opam/opam-sandbox-disable
RUN chmod a+x /home/opam/opam-sandbox-disable
RUN sudo mv /home/opam/opam-sandbox-disable /usr/bin/opam-sandbox-disable
RUN printf '%s\n' 'wrap-build-commands: ["%{hooks}%/sandbox.sh" "build"]' \
      'wrap-install-commands: ["%{hooks}%/sandbox.sh" "install"]' \
      'wrap-remove-commands: ["%{hooks}%/sandbox.sh" "remove"]' > /home/opam/.opamrc-sandbox
RUN printf '%s\n' '#!/bin/sh' 'cp ~/.opamrc-sandbox ~/.opamrc' \
      'echo --- opam sandboxing enabled' > /home/opam/opam-sandbox-enable
RUN chmod a+x /home/opam/opam-sandbox-enable
RUN sudo mv /home/opam/opam-sandbox-enable /usr/bin/opam-sandbox-enable
RUN git config --global user.email "docker@example.com"
RUN git config --global user.name "Docker"
# difference(opam-repository-from-bundle): upstream copies its build context,
# a checkout of opam-repository; Kiln's context is the Dockerfile alone, so
# the checkout is cloned from the sources server's bundle of the pinned commit
# (checked here), with origin set to GitHub for CI's later `git fetch`.
RUN curl -fsSL -o /tmp/opam-repository.bundle {{sources_url}}/opam-repository.bundle \
 && git clone --branch master /tmp/opam-repository.bundle /home/opam/opam-repository \
 && rm /tmp/opam-repository.bundle \
 && git -C /home/opam/opam-repository remote set-url origin https://github.com/ocaml/opam-repository.git \
 && test "$(git -C /home/opam/opam-repository rev-parse HEAD)" = "{{opam_repository_commit}}"
RUN opam-sandbox-disable
RUN opam init -k git -a /home/opam/opam-repository --bare
RUN echo 'archive-mirrors: "https://opam.ocaml.org/cache"' >> ~/.opam/config
RUN rm -rf .opam/repo/default/.git
COPY Dockerfile /Dockerfile.opam

# Stage 3: the compiler, on the image above (upstream's second Dockerfile).
# difference(one-recipe-two-stages): upstream builds the compiler from a
# second Dockerfile on the pushed `<os>-opam` image; Kiln keeps one recipe
# and names the stage, so stage `opam` alone is that image.
FROM opam AS compiler

# The compiler (upstream's second Dockerfile, built on the image above).
# The beta repository for dev compilers and unreleased betas, added as
# upstream adds it (`maybe_add_beta`): the same `opam repo add` of the same
# URL, so `opam update` in CI refreshes it from there.
# difference(beta-repository-from-mirror): while it is added, git's
# `insteadOf` gives opam the source mirror's bundle of the commit declared
# in versions/sources.yaml (`git:`; checked here) for that URL; the build
# reaches no GitHub.
RUN if {{ocaml_beta_repository}}; then \
      curl -fsSL -o /tmp/ocaml-beta-repository.bundle {{sources_url}}/{{ocaml_beta_repository_source}} \
      && git clone --quiet --bare /tmp/ocaml-beta-repository.bundle /tmp/ocaml-beta-repository.git \
      && rm /tmp/ocaml-beta-repository.bundle \
      && test "$(git --git-dir=/tmp/ocaml-beta-repository.git rev-parse HEAD)" = "{{ocaml_beta_repository_commit}}" \
      && git config --global url.file:///tmp/ocaml-beta-repository.git.insteadOf https://github.com/ocaml/ocaml-beta-repository \
      && opam repo add beta git+https://github.com/ocaml/ocaml-beta-repository --set-default \
      && git config --global --unset url.file:///tmp/ocaml-beta-repository.git.insteadOf \
      && rm -rf /tmp/ocaml-beta-repository.git; \
    fi
# GCC 15 defaults to C23, which breaks OCaml before 5.1 (but 4.14.2): the
# patches overlay, where upstream applies it (rule in src/plan/recipe_vars.rs),
# added as upstream adds it (`maybe_add_gcc15_overlay`).
# difference(gcc15-overlay-from-mirror): as the beta repository, from the
# mirror's bundle of the declared commit of the branch `patches`.
RUN if {{ocaml_gcc15_overlay}}; then \
      curl -fsSL -o /tmp/ocaml-patches-overlay.bundle {{sources_url}}/{{ocaml_gcc15_overlay_source}} \
      && git clone --quiet --bare /tmp/ocaml-patches-overlay.bundle /tmp/ocaml-patches-overlay.git \
      && rm /tmp/ocaml-patches-overlay.bundle \
      && test "$(git --git-dir=/tmp/ocaml-patches-overlay.git rev-parse HEAD)" = "{{ocaml_gcc15_overlay_commit}}" \
      && git config --global url.file:///tmp/ocaml-patches-overlay.git.insteadOf https://github.com/ocurrent/opam-repository \
      && opam repo add ocaml-patches-overlay git+https://github.com/ocurrent/opam-repository#patches --set-default \
      && git config --global --unset url.file:///tmp/ocaml-patches-overlay.git.insteadOf \
      && rm -rf /tmp/ocaml-patches-overlay.git; \
    fi
ENV OPAMYES="1" OPAMCONFIRMLEVEL="unsafe-yes" OPAMERRLOGLEN="0" OPAMPRECISETRACKING="1"
USER root
# OCaml 5.1 and later need zstd.
RUN if {{ocaml_needs_zstd}}; then zypper repos repo-openh264 && zypper removerepo repo-openh264 || true; fi
RUN if {{ocaml_needs_zstd}}; then zypper update -y; fi
RUN if {{ocaml_needs_zstd}}; then zypper install --force-resolution -y zstd; fi
USER opam
# difference(archive-mirror-during-build): upstream's opam fetches archives
# from opam.ocaml.org's cache or their origins; Kiln points it at the sources
# server's opam cache while the switch is built (archives by checksum, no
# GitHub) and writes upstream's mirror back after, so the image holds no
# build-time address.
RUN sed -i 's|^archive-mirrors: .*|archive-mirrors: "{{sources_url}}/opam-cache"|' ~/.opam/config
RUN opam switch create {{ocaml_switch}} --packages={{opam_packages}}
RUN opam pin add -k version {{ocaml_package_name}} {{ocaml_package_version}}
RUN opam install -y opam-depext
# Below 4.08 dune needs the secondary compiler.
RUN if {{ocaml_secondary_compiler}}; then opam install -y ocaml-secondary-compiler; fi
# difference(archive-mirror-during-build): upstream's mirror, written back.
RUN sed -i 's|^archive-mirrors: .*|archive-mirrors: "https://opam.ocaml.org/cache"|' ~/.opam/config
ENTRYPOINT [{{personality_entrypoint}}"opam", "exec", "--"]
CMD bash
# difference(kiln-labels): what Kiln built, for `docker inspect`.
LABEL org.opencontainers.image.version="{{ocaml_version}}" org.ocaml.kiln.target="{{os}}/{{arch}}/{{variant}}"
COPY Dockerfile /Dockerfile.ocaml
