#!/usr/bin/env bash
# The tiny Linux guest the QEMU builder is tested with (and the demo's
# OpenBSD-path stand-in): Debian's kernel and a busybox initramfs whose
# init speaks Kiln's install protocol, mirroring OpenBSD's auto_install:
#   kiln.mode=install: bring up the network (virtio-net, DHCP from QEMU's
#     user networking), fetch $kiln.url/install.sh from Kiln's HTTP server,
#     run it with ROOT=/target, write /target as a tar onto /dev/vda, power off;
#   kiln.mode=verify: read the tar from /dev/vda into /target, run
#     /target/bin/ocaml -version, print "KILN-VERIFY: <output>", power off.
# Idempotent: does nothing when .kiln/fixtures/qemu is complete.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${KILN_STATE_DIR:-$ROOT/.kiln}
OUT=$STATE/fixtures/qemu
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ]; then
    echo "qemu fixture: $OUT (kernel + initramfs)"
    exit 0
fi
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
(cd "$TMP" && apt-get download -q "$PKG" >/dev/null 2>&1) || {
    apt-get update -q >/dev/null 2>&1 || true
    (cd "$TMP" && apt-get download -q "$PKG" >/dev/null)
}
dpkg-deb -x "$TMP"/linux-image-*.deb "$TMP/k"
KVER=$(ls "$TMP/k/lib/modules")
M=$TMP/k/lib/modules/$KVER/kernel
I=$TMP/initrd
mkdir -p "$I"/{bin,dev,proc,sys,target,modules,usr/share/udhcpc,tmp}
cp /bin/busybox "$I/bin/busybox"
ln -s busybox "$I/bin/sh"
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko \
         net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko; do
    cp "$M/$m" "$I/modules/"
done
cat >"$I/usr/share/udhcpc/default.script" <<'S'
#!/bin/sh
case "$1" in
bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "$router"
    ;;
esac
S
cat >"$I/init" <<'S'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /target
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net; do
    insmod /modules/$m.ko || echo "KILN-BOOT: insmod $m failed"
done
for w in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.2; done
mode=$(sed -n 's/.*kiln.mode=\([^ ]*\).*/\1/p' /proc/cmdline)
url=$(sed -n 's/.*kiln.url=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "KILN-BOOT: mode=$mode"
if [ "$mode" = install ]; then
    for w in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
    echo "KILN-BOOT: interfaces: $(ls /sys/class/net | tr '\n' ' ')"
    ip link set lo up; ip link set eth0 up
    udhcpc -q -n -t 10 -i eth0 -s /usr/share/udhcpc/default.script 2>&1 | tail -2
    if wget -O /tmp/install.sh "$url/install.sh" 2>&1 && ROOT=/target sh -e /tmp/install.sh; then
        tar -c -f /dev/vda -C /target . && sync && echo "KILN-INSTALL: ok"
    else
        echo "KILN-INSTALL: failed"
    fi
elif [ "$mode" = verify ]; then
    tar -x -f /dev/vda -C /target 2>/dev/null
    echo "KILN-VERIFY: $(/target/bin/ocaml -version 2>&1)"
fi
sync
poweroff -f
S
chmod 755 "$I/init" "$I/usr/share/udhcpc/default.script"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9) >"$OUT/initrd.gz.partial"
cp "$TMP/k/boot/vmlinuz-$KVER" "$OUT/vmlinuz.partial"
mv "$OUT/initrd.gz.partial" "$OUT/initrd.gz"
mv "$OUT/vmlinuz.partial" "$OUT/vmlinuz"
echo "qemu fixture: $OUT (Debian kernel $KVER + busybox initramfs)"
