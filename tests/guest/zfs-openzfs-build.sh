#!/usr/bin/env bash
# Build (once) and cache real OpenZFS for the TCG test guest, without installing it on the host.
#
#   tests/guest/zfs-openzfs-build.sh [KERNEL_VERSION]     (root; default: the guest kernel, i.e.
#                                                          the newest /boot/vmlinuz-* with modules)
#
# Produces, under ${DBSNAP_ZFS_CACHE:-/var/cache/dbsnap-zfs}/<zfs version>-<kernel version>/:
#   ko/{spl,znvpair,zcommon,icp,zavl,zlua,zzstd,zunicode,zfs}.ko   kernel modules for the guest kernel
#   root/usr/...                                                    OpenZFS userland (zfs, zpool, libs)
#   ready                                                           written last; its presence = complete
# and prints that directory on stdout (everything else goes to stderr).
#
# Why not `apt-get install zfs-dkms zfsutils-linux`: zfsutils-linux conflicts with the host's zfs-fuse
# (the host tier's ZFS), and the dkms install also rebuilds the host's initramfs. Here the zfs-dkms
# sources are compiled against the guest kernel's headers (~4 min on 2 cores, niced) and the userland
# .debs are only unpacked; the guest copies root/ into its throw-away overlay and insmods ko/.
# Needs: linux-headers-<kernel> (scripts/install-deps.sh installs linux-headers-amd64), gcc, make.
set -euo pipefail

log() { echo "zfs-openzfs-build: $*" >&2; }
die() { log "$*"; exit 1; }

KVER=${1:-}
if [ -z "$KVER" ]; then
    for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V); do
        [ -d "/lib/modules/$k" ] && KVER=$k
    done
fi
[ -n "$KVER" ] || die "no kernel in /boot with modules in /lib/modules; run scripts/install-deps.sh"
HEADERS=$(readlink -f "/lib/modules/$KVER/build" || true)
[ -e "$HEADERS/Makefile" ] || die "no headers for $KVER at /lib/modules/$KVER/build; apt-get install linux-headers-$KVER"
# Debian splits the headers: the build tree (-amd64) includes the source tree (-common) from its
# Makefile; OpenZFS's configure needs to be told both.
SOURCE=$(sed -n 's|^include \(/.*\)/Makefile$|\1|p' "$HEADERS/Makefile" | head -1)
SOURCE=${SOURCE:-$HEADERS}

ZVER=$(apt-cache show --no-all-versions zfs-dkms 2>/dev/null | sed -n 's/^Version: //p' | head -1)
[ -n "$ZVER" ] || die "apt knows no zfs-dkms: enable Debian's contrib component and apt-get update (scripts/install-deps.sh does both)"
UPSTREAM=${ZVER%%-*}
CACHE=${DBSNAP_ZFS_CACHE:-/var/cache/dbsnap-zfs}
OUT=$CACHE/$ZVER-$KVER
if [ -f "$OUT/ready" ]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

BUILD=$(mktemp -d "$CACHE.build.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$CACHE")"; mktemp -d "$CACHE.build.XXXXXX"; })
trap 'rm -rf "$BUILD"' EXIT
started=$SECONDS
cd "$BUILD"
log "downloading zfs-dkms and the OpenZFS userland $ZVER"
apt-get download -q zfs-dkms="$ZVER" zfsutils-linux="$ZVER" libzfs4linux="$ZVER" libnvpair3linux="$ZVER" \
    libuutil3linux="$ZVER" libzpool5linux="$ZVER" >&2

log "compiling the kernel modules for $KVER (niced; ~4 min on 2 cores)"
mkdir src && dpkg-deb -x zfs-dkms_*.deb src
cd "src/usr/src/zfs-$UPSTREAM"
nice -n 19 ./configure --with-config=kernel --with-linux="$SOURCE" --with-linux-obj="$HEADERS" \
    > "$BUILD/configure.log" 2>&1 || { tail -30 "$BUILD/configure.log" >&2; die "configure failed"; }
nice -n 19 make -C module -j"$(nproc)" > "$BUILD/make.log" 2>&1 || { tail -30 "$BUILD/make.log" >&2; die "make failed"; }
mkdir -p "$BUILD/out/ko"
for m in spl znvpair zcommon icp zavl zlua zzstd zunicode zfs; do
    ko=$(find module -name "$m.ko" | head -1)
    [ -n "$ko" ] || die "the build made no $m.ko"
    cp "$ko" "$BUILD/out/ko/"
done
# Debug info is 90 % of the size (93 MB -> ~10 MB); the guest reads these over 9p.
strip --strip-debug "$BUILD"/out/ko/*.ko
cd "$BUILD"

log "unpacking the userland (merged /usr layout, like the guest's root)"
mkdir x
for d in zfsutils-linux_*.deb lib*.deb; do dpkg-deb -x "$d" x; done
mkdir -p out/root/usr/lib out/root/usr/sbin out/root/usr/bin
cp -a x/usr/. out/root/usr/
# Debian 12's /sbin, /bin and /lib are symlinks into /usr: never copy real directories over them.
for d in sbin bin lib; do
    [ -d "x/$d" ] && cp -a "x/$d/." "out/root/usr/$d/"
done
[ -d x/etc ] && cp -a x/etc out/root/
[ -x out/root/usr/sbin/zfs ] || die "the userland has no usr/sbin/zfs"

mkdir -p "$CACHE"
rm -rf "$OUT"
mv out "$OUT"
date -u +%FT%TZ > "$OUT/ready"
log "built in $((SECONDS - started)) s: $OUT"
echo "$OUT"
