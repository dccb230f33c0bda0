#!/usr/bin/env bash
# Provision a VM (or any throw-away machine) to run dbsnap's whole test suite natively.
#
# usage: provision.sh [REPO_DIR]   (default: the repository this script lives in)
#
# On Debian/Ubuntu it runs scripts/install-deps.sh, the one package list that CI and the
# TCG test guest (which runs from the host's root) also use, so all three test the same
# things. On Rocky/Alma/RHEL 9 it installs the equivalents with dnf. Then it installs Rust
# (rustup) if cargo is missing and loads the device-mapper modules the LVM tests need.
set -euo pipefail

repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
if [ "$(id -u)" -ne 0 ]; then
    echo "provision.sh: run as root" >&2
    exit 1
fi
. /etc/os-release

case " ${ID} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*)
        "$repo/scripts/install-deps.sh"
        apt-get install -y -q --no-install-recommends curl build-essential pkg-config
        ;;
    *" rhel "*|*" fedora "*|*" centos "*)
        # Keep in step with scripts/install-deps.sh. The VM runs the guest tests natively, so
        # qemu and busybox are not needed here. Not available on EL9: btrfs (the kernel
        # has no btrfs; those tests need Debian), zfs-fuse. OpenZFS comes from zfsonlinux.org
        # (see vagrant/README.md) and is optional.
        dnf install -y epel-release
        dnf install -y \
            mariadb-server mariadb mariadb-backup \
            rsync util-linux e2fsprogs xfsprogs lvm2 device-mapper-persistent-data \
            kmod \
            borgbackup restic \
            procps-ng psmisc ca-certificates \
            curl gcc make pkgconf-pkg-config
        systemctl disable --now mariadb 2>/dev/null || true
        ;;
    *)
        echo "provision.sh: unsupported distribution ${ID}; install the packages listed in" \
             "scripts/install-deps.sh by hand" >&2
        exit 1
        ;;
esac

if ! command -v cargo >/dev/null && [ ! -x /root/.cargo/bin/cargo ]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# The LVM tests create snapshots and thin pools; load the targets now and at every boot.
printf 'dm_snapshot\ndm_thin_pool\nloop\n' > /etc/modules-load.d/dbsnap-tests.conf
modprobe -a dm_snapshot dm_thin_pool loop
echo "provisioned: run 'sudo $repo/vagrant/run-tests.sh'"
