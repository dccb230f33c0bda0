#!/usr/bin/env bash
# The whole test suite, as CI runs it: install packages, check format and lints, then
# every tier against real servers and filesystems, printing each tier's wall time.
# A tier that cannot run fails the suite; nothing is skipped silently.
# Usage (as root): scripts/test.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root: the tests make loop devices, mount filesystems and start servers" >&2
    exit 1
fi

summary=()
failed=0
tier() {
    local name=$1; shift
    echo
    echo "==== tier: $name"
    local start=$SECONDS
    "$@"
    local rc=$?
    local took=$((SECONDS - start))
    if [ $rc -eq 0 ]; then
        summary+=("ok      ${took}s  $name")
    else
        summary+=("FAILED  ${took}s  $name (exit $rc)")
        failed=1
    fi
    return $rc
}

tier "install packages" bash scripts/install-deps.sh || { printf '%s\n' "${summary[@]}"; exit 1; }
tier "format" cargo fmt --all -- --check
tier "lint" cargo clippy --workspace --all-targets --locked -- -D warnings
tier "build" cargo build --workspace --all-targets --locked
# Unit tests, then integration tests on the host: real MariaDB, btrfs on loop devices, zfs-fuse.
tier "unit and host integration tests" cargo test --workspace --locked

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
exit $failed
