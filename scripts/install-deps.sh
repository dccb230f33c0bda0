#!/usr/bin/env bash
# Install the Debian/Ubuntu packages dbsnap needs. Idempotent; run as root.
#
#   scripts/install-deps.sh --sandbox   only what scripts/sandbox.sh needs (MariaDB,
#                                       btrfs-progs, rsync): a newcomer's first command
#   scripts/install-deps.sh             everything the test suite needs (.ci/run): the
#                                       sandbox set, LVM/ZFS tools, the guest kernel and
#                                       qemu, node_exporter, systemd-analyze, cargo-deb
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (it calls apt-get)" >&2
    exit 1
fi
sandbox_only=0
case "${1:-}" in
    --sandbox) sandbox_only=1 ;;
    "") ;;
    *) echo "install-deps.sh: unknown argument $1 (use --sandbox or nothing)" >&2; exit 2 ;;
esac

export DEBIAN_FRONTEND=noninteractive

sandbox_packages=(
    mariadb-server mariadb-client
    btrfs-progs rsync util-linux procps ca-certificates
)
test_packages=(
    mariadb-backup
    e2fsprogs xfsprogs lvm2 thin-provisioning-tools
    zfs-fuse
    qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static kmod cpio
    borgbackup restic
    # the restic destination's REST server (`rclone serve restic`)
    rclone
    # real sshd for the ssh destinations and sftp repository tests; b3sum checks
    # checksums on the backup host
    openssh-server openssh-client b3sum
    psmisc fonts-dejavu-core jq
    # the package tier: systemd-analyze verify, man -w, cargo-deb's strip
    systemd man-db binutils
    # the metrics tests scrape a real node_exporter
    prometheus-node-exporter
    # the backup host as a separate host: its own network namespace and veth (`ip netns`)
    iproute2
)
# The version of cargo-deb that builds the .deb (packaging/build-deb.sh).
cargo_deb_version=3.8.0

packages=("${sandbox_packages[@]}")
if [ $sandbox_only -eq 0 ]; then
    packages+=("${test_packages[@]}")
    # Debian keeps zfs-dkms/zfsutils-linux in "contrib"; add it where the sources use the deb822 format.
    if [ -f /etc/apt/sources.list.d/debian.sources ] && ! grep -q contrib /etc/apt/sources.list.d/debian.sources; then
        sed -i 's/^Components: main$/Components: main contrib/' /etc/apt/sources.list.d/debian.sources
    fi
fi

# Packages must not start their own servers: tests start private ones.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d

apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"

rm -f /usr/sbin/policy-rc.d

if [ $sandbox_only -eq 0 ]; then
    if [ "$(cargo deb --version 2>/dev/null)" = "cargo-deb $cargo_deb_version" ]; then
        echo "cargo-deb $cargo_deb_version is installed"
    else
        cargo install cargo-deb --version "$cargo_deb_version" --locked
    fi
fi
