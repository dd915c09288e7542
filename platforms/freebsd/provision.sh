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
#   - as the opam user in the jail: the opam 2.x release binaries side by
#     side as /usr/local/bin/opam-2.x with `opam` the default, git's
#     identity, OPAMCONFIRMLEVEL in ~/.profile, opam-repository and an opam
#     root for the compiler.
# Kiln snapshots the tree afterwards and smoke-tests `ocaml -version` in a
# jail of it, through the opam user's profile.
#
# Deliberate differences from freebsd-infra, each for a reason:
#   - opam binaries from the release URLs of exact versions
#     ({{opam_releases}}) instead of install.sh from master, and
#     opam-repository at the pinned commit: both are build inputs;
#   - the switch is named after the series ({{ocaml_series}}) with
#     --packages={{opam_packages}}, as in every other Kiln image;
#   - no opam-dev binary (a moving target cannot be part of a keyed image).
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
pkg install -y sudo gmake gmp git patch rsync bash zstd pkgconf curl
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
git config --global user.email "opam@example.com"
git config --global user.name "opam"
default=""
for v in {{opam_releases}}; do
    minor=${v%.*}
    curl -fsSL -o "opam-$minor" \
        "https://github.com/ocaml/opam/releases/download/$v/opam-$v-{{opam_arch}}-freebsd"
    chmod 755 "opam-$minor"
    sudo mv "opam-$minor" "/usr/local/bin/opam-$minor"
    default="opam-$minor"
done
sudo ln -f "/usr/local/bin/$default" /usr/local/bin/opam
git clone https://github.com/ocaml/opam-repository.git opam-repository
git -C opam-repository checkout --quiet --detach {{opam_repository_commit}}
opam init -y -k git -a --bare --disable-sandboxing ./opam-repository
opam switch create -y {{ocaml_series}} --packages={{opam_packages}}
opam clean -a -c -s --logs
echo 'eval $(opam env --switch={{ocaml_series}} --set-switch)' >> .profile
OPAM
chmod 755 "$ROOTFS/home/opam/kiln-opam.sh"
chown 1000:1000 "$ROOTFS/home/opam/kiln-opam.sh"
jail -c name="$KILN_JAIL" path="$ROOTFS" host=inherit ip4=inherit ip6=inherit \
    mount.devfs exec.clean exec.jail_user=opam command=/home/opam/kiln-opam.sh
umount -f "$ROOTFS/dev" 2>/dev/null || true
rm -f "$ROOTFS/home/opam/kiln-opam.sh"
