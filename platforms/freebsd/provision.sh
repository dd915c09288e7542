#!/bin/sh
# Kiln recipe: provision a FreeBSD {{release}} jail rootfs for OCaml
# {{ocaml_version}}. Runs with ROOTFS set to the `rootfs` child dataset's
# mountpoint; Kiln snapshots it afterwards, smoke-tests `ocaml -version`
# inside the jail's profile, and ships it as a `zfs send` stream.
set -eu
: "${ROOTFS:?}"
if [ ! -x "$ROOTFS/bin/sh" ]; then
    BSDINSTALL_DISTSITE=https://download.freebsd.org/releases/amd64/{{release}}-RELEASE \
    DISTRIBUTIONS="base.txz" bsdinstall jail "$ROOTFS"
fi
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" env ASSUME_ALWAYS_YES=yes pkg bootstrap -f
chroot "$ROOTFS" env ASSUME_ALWAYS_YES=yes pkg install -y gmake gmp pkgconf git curl rsync patch bash sudo opam
chroot "$ROOTFS" pw useradd -n opam -m -s /usr/local/bin/bash -u 1000 || true
chroot "$ROOTFS" su -l opam -c "opam init -y --bare --disable-sandboxing \
    https://github.com/ocaml/opam-repository.git#{{opam_repository_commit}} \
 && opam switch create -y {{ocaml_series}} --packages={{opam_packages}} \
 && opam clean -a -c -s --logs \
 && echo 'eval \$(opam env --switch={{ocaml_series}} --set-switch)' >> ~/.profile"
