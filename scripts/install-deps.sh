#!/usr/bin/env bash
# Install every Debian/Ubuntu package dbsnap's sandbox, tests and guest tier need.
# Idempotent; run as root. Used by the README's set-up commands and by .ci/run.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (it calls apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Debian keeps zfs-dkms/zfsutils-linux in "contrib"; add it where the sources use the deb822 format.
if [ -f /etc/apt/sources.list.d/debian.sources ] && ! grep -q contrib /etc/apt/sources.list.d/debian.sources; then
    sed -i 's/^Components: main$/Components: main contrib/' /etc/apt/sources.list.d/debian.sources
fi

# Packages must not start their own servers: tests start private ones.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d

apt-get update -q
apt-get install -y -q --no-install-recommends \
    mariadb-server mariadb-client mariadb-backup \
    btrfs-progs rsync util-linux e2fsprogs xfsprogs lvm2 thin-provisioning-tools \
    zfs-fuse \
    qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static kmod cpio \
    borgbackup restic \
    openssh-server openssh-client b3sum \
    procps psmisc ca-certificates fonts-dejavu-core jq

rm -f /usr/sbin/policy-rc.d
