#!/bin/sh
# Kiln recipe: provision a FreeBSD {{release}} jail rootfs for OCaml
# {{ocaml_version}}.
#
# Kiln runs this as root on the FreeBSD worker that owns the pool, over
# ssh, with ROOTFS set to the `rootfs` child dataset's mountpoint and
# KILN_JAIL to the name of the jail to provision in (Kiln removes that
# jail and unmounts its devfs afterwards, whatever happens). It follows
# ocurrent/freebsd-infra's base-image role, which is what obuilder's jail
# sandbox expects:
#   - `bsdinstall jail` of base.txz, then `freebsd-update fetch install`;
#   - pkg upgraded in the rootfs;
#   - inside `jail -c … mount.devfs`: the opam user (uid 1000) and group,
#     sudo with a NOPASSWD entry for it, the build tools;
#   - as the opam user in the jail: opam 2.1 to 2.5 and opam-dev side by
#     side as /usr/local/bin/opam-2.x and opam-dev with `opam` a hard link
#     to opam-2.1, git's identity, OPAMCONFIRMLEVEL in ~/.profile,
#     opam-repository and an opam root for the compiler.
# Kiln snapshots the tree afterwards and smoke-tests `ocaml -version` in a
# jail of it, through the opam user's profile.
#
# Everything but FreeBSD's own sets and packages comes from Kiln's source
# mirror at {{sources_url}} (the build's server, reached from the worker
# through a reverse forward over Kiln's ssh connection, on the worker's
# loopback, which the jail shares with ip4=inherit): opam's release
# tarballs, the opam-repository bundle of the pinned commit, and the
# compiler's archives through opam's archive-mirrors. base.txz,
# freebsd-update and pkg stay with FreeBSD's own mirrors, as the distro
# packages of the other platforms do.
#
# Deliberate differences from freebsd-infra, each for a reason:
#   - opam is built from the declared release tarballs opam-full-2.x.y
#     (pinned by sha256, vendored dependencies inside) instead of the
#     binaries install.sh from master downloads from GitHub, which nothing
#     pins; opam-dev is the newest release (2.6.1), as in Kiln's Docker
#     images, since a branch head cannot be a build input;
#   - opam-repository is the mirror's bundle of the pinned commit, checked
#     against it, with origin set back to GitHub's URL (freebsd-infra
#     clones GitHub's HEAD): the commit is a build input;
#   - the compiler's archives come from the mirror's opam cache while the
#     switch is built, and upstream's cache (https://opam.ocaml.org/cache)
#     is written back afterwards, so the tree holds no build-time address;
#   - the switch, named by the full version ({{ocaml_version}}) as
#     freebsd-infra's `opam init -c VERSION` names it, is made by `opam
#     switch create` with --packages={{opam_packages}}, the catalogue's
#     packages, so that it is the compiler the key says;
#   - the tarballs are fetched with curl, which git's package brings in
#     (freebsd-infra's script uses it the same way, installing nothing else).
set -eu
: "${ROOTFS:?}" "${KILN_JAIL:?}"
export ASSUME_ALWAYS_YES=yes
if [ ! -x "$ROOTFS/bin/sh" ]; then
    nonInteractive=YES \
    BSDINSTALL_DISTSITE=https://download.freebsd.org/ftp/releases/amd64/amd64/{{release}}-RELEASE \
    DISTRIBUTIONS="base.txz" bsdinstall jail "$ROOTFS"
fi
# freebsd-update exits 2 when there is nothing to install.
env PAGER=cat freebsd-update -b "$ROOTFS" --currently-running {{release}}-RELEASE \
    --not-running-from-cron fetch install || [ $? -eq 2 ]
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
pkg --chroot "$ROOTFS" install -y pkg
pkg --chroot "$ROOTFS" upgrade -f -y

# Setup as root inside the jail.
cat > "$ROOTFS/root/kiln-setup.sh" <<'SETUP'
#!/bin/sh
set -eu
export ASSUME_ALWAYS_YES=yes
pw groupshow opam >/dev/null 2>&1 || pw groupadd opam -g 1000
pw usershow opam >/dev/null 2>&1 || pw useradd -m -n opam -g opam -u 1000 -h - -s /bin/sh -c opam
pkg install -y sudo gmake git patch rsync bash zstd pkgconf
echo "opam ALL=(ALL:ALL) NOPASSWD: ALL" > /usr/local/etc/sudoers.d/opam
SETUP
chmod 755 "$ROOTFS/root/kiln-setup.sh"
jail -c name="$KILN_JAIL" path="$ROOTFS" host=inherit ip4=inherit ip6=inherit \
    mount.devfs command=/root/kiln-setup.sh
umount -f "$ROOTFS/dev" 2>/dev/null || true
rm -f "$ROOTFS/root/kiln-setup.sh"

# The opam user's part, inside the jail.
cat > "$ROOTFS/home/opam/kiln-opam.sh" <<'OPAM'
#!/bin/sh
set -eu
cd /home/opam
touch .hushlogin
sed -i "" 's/^[^#]*fortune/# &/' .profile .login 2>/dev/null || true
echo "OPAMCONFIRMLEVEL=unsafe-yes; export OPAMCONFIRMLEVEL" >> .profile
git config --global user.email "you@example.com"
git config --global user.name "Your Name"
# opam from the mirror's release tarballs, side by side as freebsd-infra
# installs its binaries, `opam` a hard link to opam-2.1 as there.
build_opam() { # <release tarball URL> <installed as> <configure flags>
    dir="/tmp/opam-build-$2"
    rm -rf "$dir" && mkdir -p "$dir"
    curl -fsSL -o "$dir.tar.gz" "$1"
    tar -xzf "$dir.tar.gz" -C "$dir" --strip-components=1
    rm "$dir.tar.gz"
    # $3 is a list of flags.
    # shellcheck disable=SC2086
    (cd "$dir" && PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" ./configure $3 &&
        PATH="/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH" gmake lib-ext all)
    sudo install -m 755 "$dir/opam" "/usr/local/bin/$2"
    rm -rf "$dir"
}
# The bootstrap compiler opam's configure needs, from the newest tarball.
mkdir -p /tmp/opam-bootstrap
curl -fsSL -o /tmp/opam-full-2.5.2.tar.gz {{sources_url}}/opam-full-2.5.2.tar.gz
tar -xzf /tmp/opam-full-2.5.2.tar.gz -C /tmp/opam-bootstrap --strip-components=1
rm /tmp/opam-full-2.5.2.tar.gz
(cd /tmp/opam-bootstrap && gmake compiler)
build_opam {{sources_url}}/opam-full-2.1.6.tar.gz opam-2.1 "--with-0install-solver"
build_opam {{sources_url}}/opam-full-2.2.1.tar.gz opam-2.2 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.3.0.tar.gz opam-2.3 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.4.1.tar.gz opam-2.4 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.5.2.tar.gz opam-2.5 "--with-0install-solver --with-vendored-deps"
build_opam {{sources_url}}/opam-full-2.6.1.tar.gz opam-dev "--with-0install-solver --with-vendored-deps"
rm -rf /tmp/opam-bootstrap
sudo ln -f /usr/local/bin/opam-2.1 /usr/local/bin/opam
# opam-repository: the mirror's bundle of the pinned commit, checked, with
# origin set back to GitHub's URL for the jobs.
curl -fsSL -o /tmp/opam-repository.bundle {{sources_url}}/opam-repository.bundle
git clone --quiet --branch master /tmp/opam-repository.bundle opam-repository
rm /tmp/opam-repository.bundle
git -C opam-repository remote set-url origin https://github.com/ocaml/opam-repository.git
test "$(git -C opam-repository rev-parse HEAD)" = "{{opam_repository_commit}}"
# opam's defaults (sandboxing as opam has it on FreeBSD) and its shell setup
# (-a: the hook in ~/.profile), as freebsd-infra's `opam init -y`.
opam init -y -k git -a --bare ./opam-repository
# The compiler's archives from the source mirror; the tree keeps upstream's cache.
opam option --global archive-mirrors={{sources_url}}/opam-cache
opam switch create -y {{ocaml_version}} --packages={{opam_packages}}
opam option --global archive-mirrors=https://opam.ocaml.org/cache
opam clean -a -c -s --logs
OPAM
chmod 755 "$ROOTFS/home/opam/kiln-opam.sh"
chown 1000:1000 "$ROOTFS/home/opam/kiln-opam.sh"
jail -c name="$KILN_JAIL" path="$ROOTFS" host=inherit ip4=inherit ip6=inherit \
    mount.devfs exec.clean exec.jail_user=opam command=/home/opam/kiln-opam.sh
umount -f "$ROOTFS/dev" 2>/dev/null || true
rm -f "$ROOTFS/home/opam/kiln-opam.sh"
