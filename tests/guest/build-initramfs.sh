#!/usr/bin/env bash
# Build the dbsnap test guest's initramfs: busybox-static plus the virtio, 9p and overlay
# modules of the guest kernel. It only mounts the host's root over 9p (read-only, under an
# overlay with a tmpfs upper layer) and hands over to tests/guest/guest-init.sh.
#
# usage: build-initramfs.sh KERNEL_VERSION OUTPUT.gz
# Needs: busybox-static, cpio, gzip, kmod (modinfo), the kernel's /lib/modules tree.
# Takes under a second; the Rust harness (tests/support/src/guest.rs) runs it for every boot.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 KERNEL_VERSION OUTPUT.gz" >&2
    exit 2
fi
kver=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)

busybox=/bin/busybox
if ! "$busybox" --list 2>/dev/null | grep -qx switch_root; then
    echo "$busybox is missing or not busybox-static: apt-get install busybox-static" >&2
    exit 1
fi
case "$(ldd "$busybox" 2>&1 || true)" in
    *"not a dynamic executable"*) ;;
    *) echo "$busybox is dynamically linked; the initramfs needs busybox-static (apt-get install busybox-static)" >&2
       exit 1 ;;
esac

# Load order matters: each module after the ones it depends on.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/dbsnap-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,lower,rw,newroot,mods}
cp "$busybox" "$work/bin/busybox"
for m in $modules; do
    path=$(modinfo -k "$kver" -n "$m" 2>/dev/null) || {
        echo "module $m not found for kernel $kver: is linux-image-$kver installed?" >&2
        exit 1
    }
    case $path in
        *.ko) cp "$path" "$work/mods/$m.ko" ;;
        *) echo "module $m is $path; busybox insmod needs an uncompressed .ko" >&2; exit 1 ;;
    esac
done
echo "$modules" > "$work/modules"
cp "$here/initramfs-init" "$work/init"
chmod 755 "$work/init"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
