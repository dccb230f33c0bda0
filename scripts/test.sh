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
# The OpenZFS kernel modules for the guest kernel: built once (minutes), then cached.
tier "OpenZFS modules for the guest" bash tests/guest/zfs-openzfs-build.sh
tier "unit tests" cargo test --workspace --locked --lib --bins
# The consistency tier (tests/consistency_under_load.rs) takes this many backups under
# load and restores each (about 5 s apiece here, so CI's 20 take under 2 minutes); a
# nightly run leaves it unset for the test's own default of 100.
export DBSNAP_CONSISTENCY_BACKUPS=${DBSNAP_CONSISTENCY_BACKUPS:-20}
echo "consistency tier: DBSNAP_CONSISTENCY_BACKUPS=$DBSNAP_CONSISTENCY_BACKUPS backups under load"
# Integration tests: real MariaDB servers on btrfs (loop devices) and zfs-fuse on the host,
# LVM and OpenZFS inside the emulated guest. Each suite's wall time is in its "finished in" line.
tier "integration tests (host and guest)" bash -o pipefail -c \
    'cargo test --workspace --locked --no-fail-fast --test "*" 2>&1 | tee target/integration.log'
# The Debian package (budget: 10 minutes, most of it the release build): build the .deb,
# install it on this machine, verify its units, run the backup unit's command lines on a
# real server, remove and purge it. Runs after the integration tests, so none of them
# could pick up the installed /usr/bin/dbsnap (they run CARGO_BIN_EXE_dbsnap anyway).
tier "package (.deb)" bash -o pipefail -c \
    'bash packaging/build-deb.sh && cargo test --locked -p dbsnap --test package -- --ignored 2>&1 | tee target/package.log'
awk '/^     Running /{name=$2} /^test result:/{printf "  %8s  %-6s %s\n", $NF, $3, name}' target/integration.log \
    > target/suite-times.txt || true

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
if [ -s target/suite-times.txt ]; then
    echo "==== integration suites (wall time, result, binary)"
    cat target/suite-times.txt
fi
exit $failed
