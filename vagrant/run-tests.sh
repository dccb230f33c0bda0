#!/usr/bin/env bash
# Run dbsnap's test suite natively on a provisioned VM (see provision.sh, README.md).
# The tests that normally boot the TCG guest run their guest part directly on this machine
# (DBSNAP_GUEST_NATIVE=1), with loop devices as their disks: the VM is the guest.
# Extra arguments go to `cargo test`, e.g. `run-tests.sh -p dbsnap-lvm`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
    echo "run-tests.sh: run as root (the tests create LVs, mount filesystems, start servers)" >&2
    exit 1
fi
export PATH=/root/.cargo/bin:$PATH DBSNAP_GUEST_NATIVE=1
cd "$repo"
if [ $# -eq 0 ]; then
    set -- --workspace
fi
time cargo test "$@"
