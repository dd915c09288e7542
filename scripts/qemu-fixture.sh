#!/usr/bin/env bash
# The tiny Linux guest the QEMU builder is tested with (and the demo's
# OpenBSD-path stand-in). It follows OpenBSD's install protocol, so the
# tests drive the same path a real OpenBSD install takes:
#   - no installed system on the disk, DHCP filename `auto_install`: the
#     installer. It fetches http://<DHCP next-server>/install.conf (port
#     80, as autoinstall(8) does), reads "HTTP Server", "Server directory",
#     "Set name(s)", "Setup a user" and "Public ssh key for user", fetches
#     SHA256, index.txt and each set the patterns select from
#     http://<server>/<directory>/, refuses a set
#     whose sha256 disagrees with SHA256 (the site set is not in it and
#     is taken unverified, as install.conf answers), extracts the sets into
#     the new system, creates the user with the key, runs install.site
#     chrooted into the new system, writes the system onto the disk (a tar
#     on /dev/vda), prints "KILN-INSTALL: ok" and powers off;
#   - an installed system on the disk: boot it, as OpenBSD's rc does:
#     network by DHCP (whatever QEMU gives), "KILN-NET: <probe> reachable"
#     or "unreachable" for the kiln.probe URL on the command line, then
#     /etc/rc.firsttime once (moved aside, run, removed), then sshd
#     (dropbear) on port 22; `shutdown -p now` (/sbin/shutdown of the base
#     set) asks init to write the system back to the disk and power off.
# The guest's userland (busybox, dropbear and its libraries) is its
# ramdisk's, copied into the new system by the installer; the base set
# served to it is the system's configuration, built here byte for byte
# the same every time, so its SHA256 can be pinned in the demo's
# platform.yaml like a real release's.
# For the PXE path (OpenBSD's own: pxeboot from TFTP as `auto_install`,
# which reads etc/boot.conf and boots bsd.rd), the guest's boot loader is
# QEMU's iPXE: fixtures/qemu/boot/pxeboot is an iPXE script that chains
# etc/boot.conf from the same TFTP server, where the test's boot.conf (an
# iPXE script too) boots bsd.rd (this kernel) with bsd.rd.initrd.
# The download-cache disk: the guest has ext4 (mke2fs formats /dev/vdb in
# the first boot) and a `doas` (setuid root, what OpenBSD's
# `permit nopass :wheel` gives the user), so the verify boot mounts it as
# obuilder's sandbox does on OpenBSD (`doas mount <disk> <dir>`).
# Outputs, under $KILN_STATE_DIR (.kiln): fixtures/qemu/{vmlinuz,initrd.gz},
# fixtures/qemu/sets/{SHA256,base79.tgz}, fixtures/qemu/boot/pxeboot, and
# qemu/id_ed25519 (the tests' login key, when there is none), and the
# operator's login key in the identity dir. Idempotent: does
# nothing when all are there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${KILN_STATE_DIR:-$ROOT/.kiln}
OUT=$STATE/fixtures/qemu
PROTOCOL=openbsd-install-6
# The tests' login key (in the shared test state), and the operator's, in
# the identity dir the default config names (outside the state dir:
# `kiln doctor` checks it).
IDENTITY=${KILN_IDENTITY_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/kiln}
for KEY in "$STATE/qemu/id_ed25519" "$IDENTITY/id_ed25519"; do
    if [ ! -s "$KEY" ]; then
        mkdir -p "$(dirname "$KEY")"
        chmod 700 "$(dirname "$KEY")"
        rm -f "$KEY.tmp" "$KEY.tmp.pub"
        ssh-keygen -q -t ed25519 -N '' -C kiln-qemu -f "$KEY.tmp"
        mv "$KEY.tmp.pub" "$KEY.pub"
        mv "$KEY.tmp" "$KEY"
    fi
done
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] && [ -s "$OUT/sets/SHA256" ] && [ -s "$OUT/boot/pxeboot" ] &&
    [ "$(cat "$OUT/protocol" 2>/dev/null)" = "$PROTOCOL" ]; then
    echo "qemu fixture: $OUT (kernel + initramfs + sets)"
    exit 0
fi
mkdir -p "$OUT/sets" "$OUT/boot"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The base set: configuration only, deterministic (no times, no owners
# but root, gzip without a name or time).
python3 - "$OUT/sets" <<'PY'
import gzip, hashlib, io, sys, tarfile
out = sys.argv[1]
files = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\nwheel:x:0:root\n",
    "etc/shells": "/bin/sh\n",
    "etc/fixture-release": "kiln test guest: OpenBSD install protocol\n",
    "sbin/shutdown": "#!/bin/sh\n# shutdown -p now: init writes the system to the disk and powers off.\nkill -USR2 1\n",
}
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for d in ["etc", "sbin", "root", "home", "tmp"]:
        i = tarfile.TarInfo("./" + d); i.type = tarfile.DIRTYPE
        i.mode = 0o1777 if d == "tmp" else 0o755; i.mtime = 0
        tar.addfile(i)
    for name, text in sorted(files.items()):
        data = text.encode()
        i = tarfile.TarInfo("./" + name); i.size = len(data); i.mtime = 0
        i.mode = 0o755 if text.startswith("#!") else 0o644
        tar.addfile(i, io.BytesIO(data))
gz = io.BytesIO()
with gzip.GzipFile(filename="", mode="wb", fileobj=gz, compresslevel=0, mtime=0) as f:
    f.write(buf.getvalue())
data = gz.getvalue()
open(f"{out}/base79.tgz", "wb").write(data)
open(f"{out}/SHA256", "w").write(f"SHA256 (base79.tgz) = {hashlib.sha256(data).hexdigest()}\n")
PY

# pxeboot's stand-in: TFTP's etc/boot.conf decides what boots.
printf '#!ipxe\nchain tftp://${next-server}/etc/boot.conf\n' >"$OUT/boot/pxeboot"

PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
(cd "$TMP" && apt-get download -q "$PKG" >/dev/null 2>&1) || {
    apt-get update -q >/dev/null 2>&1 || true
    (cd "$TMP" && apt-get download -q "$PKG" >/dev/null)
}
dpkg-deb -x "$TMP"/linux-image-*.deb "$TMP/k"
KVER=$(ls "$TMP/k/lib/modules")
M=$TMP/k/lib/modules/$KVER/kernel
I=$TMP/initrd
mkdir -p "$I"/{bin,dev,proc,sys,target,modules,usr/share/udhcpc,usr/sbin,tmp}
cp /bin/busybox "$I/bin/busybox"
ln -s busybox "$I/bin/sh"
# sshd: dropbear and the libraries it links.
cp /usr/sbin/dropbear "$I/usr/sbin/dropbear"
for lib in $(ldd /usr/sbin/dropbear | awk '/=>/{print $3} /ld-linux/{print $1}'); do
    mkdir -p "$I$(dirname "$lib")"
    cp -L "$lib" "$I$lib"
done
# OpenBSD's doas for the user (permit nopass :wheel): setuid root.
mkdir -p "$I/usr/bin"
cat >"$TMP/doas.c" <<'C'
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: doas command [arg ...]\n"); return 1; }
    if (setgid(0) != 0 || setuid(0) != 0) { perror("doas"); return 1; }
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}
C
cc -static -Os -o "$I/usr/bin/doas" "$TMP/doas.c"
chmod 4755 "$I/usr/bin/doas"
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko \
         net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko \
         lib/crc16.ko crypto/crc32c_generic.ko fs/mbcache.ko fs/jbd2/jbd2.ko fs/ext4/ext4.ko; do
    cp "$M/$m" "$I/modules/"
done
cat >"$I/usr/share/udhcpc/default.script" <<'S'
#!/bin/sh
case "$1" in
bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "$router"
    { echo "siaddr=$siaddr"; echo "boot_file=$boot_file"; } >/tmp/lease
    ;;
esac
S
cat >"$I/init" <<'S'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /target
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net crc16 crc32c_generic mbcache jbd2 ext4; do
    insmod /modules/$m.ko || echo "KILN-BOOT: insmod $m failed"
done
for w in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done

net_up() {
    for w in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
    ip link set lo up; ip link set eth0 up
    udhcpc -q -n -t 10 -i eth0 -s /usr/share/udhcpc/default.script >/tmp/udhcpc.log 2>&1
    . /tmp/lease 2>/dev/null
}

fail() { echo "KILN-INSTALL: failed: $*"; sync; poweroff -f; }

autoinstall() {
    echo "KILN-BOOT: autoinstall from next-server $siaddr"
    wget -q -O /tmp/install.conf "http://$siaddr/install.conf" ||
        fail "no response file at http://$siaddr/install.conf"
    answer() { sed -n "s/^$1 = //p" /tmp/install.conf | head -1; }
    server=$(answer 'HTTP Server'); dir=$(answer 'Server directory')
    sets=$(answer 'Set name(s)'); user=$(answer 'Setup a user')
    key=$(answer 'Public ssh key for user')
    url="http://$server/$dir"
    wget -q -O /tmp/SHA256 "$url/SHA256" || fail "no SHA256 at $url/SHA256"
    # Over HTTP the installer learns what the directory holds from index.txt
    # (the last word of each line), then takes what the patterns select.
    wget -q -O /tmp/index.txt "$url/index.txt" || fail "no index.txt at $url/index.txt"
    selected=
    for f in $(sed 's/^.* //' /tmp/index.txt); do
        for pat in $sets; do
            case "$pat" in -*) continue ;; esac
            # shellcheck disable=SC2254
            case "$f" in $pat) selected="$selected $f"; break ;; esac
        done
    done
    [ -n "$selected" ] || fail "no set in $url/index.txt matches: $sets"
    for s in $selected; do
        wget -q -O /tmp/set "$url/$s" || fail "set $s: not found at $url/$s"
        case "$s" in
        site*) echo "KILN-INSTALL: $s is not in SHA256: installed unverified" ;;
        *)
            want=$(sed -n "s/^SHA256 ($s) = //p" /tmp/SHA256)
            got=$(sha256sum /tmp/set | cut -d' ' -f1)
            [ -n "$want" ] && [ "$want" = "$got" ] ||
                fail "set $s: checksum mismatch: SHA256 says ${want:-nothing}, got $got"
            echo "KILN-INSTALL: $s verified"
            ;;
        esac
        tar -x -z -f /tmp/set -C /target || fail "set $s: cannot extract"
    done
    # The userland is the ramdisk's.
    cp -a /bin /usr /lib /lib64 /target/
    if [ -n "$user" ]; then
        echo "$user:x:1000:1000::/home/$user:/bin/sh" >>/target/etc/passwd
        echo "$user:x:1000:" >>/target/etc/group
        mkdir -p "/target/home/$user/.ssh"
        echo "$key" >"/target/home/$user/.ssh/authorized_keys"
        chmod 700 "/target/home/$user/.ssh"; chmod 600 "/target/home/$user/.ssh/authorized_keys"
        chown -R 1000:1000 "/target/home/$user"
    fi
    if [ -f /target/install.site ]; then
        chroot /target /bin/sh -e /install.site || fail "install.site failed"
        rm -f /target/install.site
    fi
    tar -c -f /dev/vda -C /target . && sync && echo "KILN-INSTALL: ok"
}

disk_boot() {
    echo "KILN-BOOT: booting the installed system"
    halt=
    trap 'halt=1' USR2
    mkdir -p /target/proc /target/dev /target/etc/dropbear
    mount -t proc proc /target/proc; mount -o bind /dev /target/dev
    net_up
    probe=$(sed -n 's/.*kiln.probe=\([^ ]*\).*/\1/p' /proc/cmdline)
    if [ -n "$probe" ] && timeout 5 wget -q -O /dev/null "$probe" 2>/dev/null; then
        echo "KILN-NET: $probe reachable"
    else
        echo "KILN-NET: $probe unreachable"
    fi
    if [ -f /target/etc/rc.firsttime ]; then
        mv /target/etc/rc.firsttime /target/etc/rc.firsttime.run
        echo "KILN-FIRSTBOOT: running /etc/rc.firsttime"
        chroot /target /bin/sh /etc/rc.firsttime.run 2>&1
        echo "KILN-FIRSTBOOT: rc.firsttime exited $?"
        rm -f /target/etc/rc.firsttime.run
    fi
    chroot /target /usr/sbin/dropbear -R -E -p 22 2>/dev/null
    echo "KILN-BOOT: up"
    while [ -z "$halt" ]; do sleep 1; done
    echo "KILN-BOOT: shutdown: writing the system to the disk"
    killall dropbear 2>/dev/null
    umount /target/proc /target/dev
    tar -c -f /dev/vda -C /target . && sync
}

mkdir -p /mnt
tar -x -f /dev/vda -C /target 2>/dev/null
if [ -f /target/etc/fixture-release ]; then
    disk_boot
else
    net_up
    if [ "$boot_file" = auto_install ]; then
        autoinstall
    else
        echo "KILN-BOOT: no installed system on the disk, and not netbooted into auto_install"
    fi
fi
sync
poweroff -f
S
chmod 755 "$I/init" "$I/usr/share/udhcpc/default.script"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9) >"$OUT/initrd.gz.partial"
cp "$TMP/k/boot/vmlinuz-$KVER" "$OUT/vmlinuz.partial"
mv "$OUT/initrd.gz.partial" "$OUT/initrd.gz"
mv "$OUT/vmlinuz.partial" "$OUT/vmlinuz"
echo "$PROTOCOL" >"$OUT/protocol"
echo "qemu fixture: $OUT (Debian kernel $KVER + busybox/dropbear initramfs, base set $(cut -d' ' -f4 "$OUT/sets/SHA256"))"
