#!/bin/bash
# PID 1 of the dbsnap test guest. Runs from the host's root (over 9p, under an overlay).
#
# The host harness (tests/support/src/guest.rs) prepares a run directory and exports it as the
# 9p share `results`. It holds the job, written as data rather than as a script, so nothing
# is ever quoted for a shell:
#   argv     the command to run, NUL-separated
#   env      extra environment, NUL-separated KEY=VALUE
#   cwd      the working directory
#   modules  kernel modules to load first, one per line
#   disks    how many virtio disks to wait for
# The guest writes back: boot (uptime when the job starts), stdout, stderr, rc.
# Then it reports rc to qemu through the isa-debug-exit port and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
# devtmpfs lacks these links (udev makes them); bash process substitution needs /dev/fd.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
# LVM keeps its locks and caches under /run; MariaDB its sockets.
mount -t tmpfs -o mode=755 run /run
mkdir -p /run/lock /run/lvm /run/mysqld
hostname dbsnap-guest
ip link set lo up 2>/dev/null

R=/run/dbsnap-guest
mkdir -p $R

poweroff_now() {
    sync
    # isa-debug-exit: qemu exits with status (value << 1) | 1.
    printf "\\x$(printf %02x $(($1 & 0x7f)))" | dd of=/dev/port bs=1 seek=$((0xf4)) count=1 2>/dev/null
    echo o > /proc/sysrq-trigger
    sleep 10
}

if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none results $R; then
    echo "dbsnap-guest: mounting the results share failed" > /dev/console
    poweroff_now 125
fi
echo "$(cut -d' ' -f1 /proc/uptime)" > $R/boot

fail() {
    echo "dbsnap-guest: $*" | tee -a $R/stderr > /dev/console
    echo 125 > $R/rc
    poweroff_now 125
}

while read -r m || [ -n "$m" ]; do
    [ -n "$m" ] || continue
    modprobe "$m" || fail "modprobe $m failed"
done < $R/modules  # (the last line may lack a newline)

want=$(cat $R/disks)
for _ in $(seq 100); do
    have=$(ls -d /sys/block/vd* 2>/dev/null | wc -l)
    [ "$have" -ge "$want" ] && break
    sleep 0.1
done
[ "$have" -ge "$want" ] || fail "expected $want virtio disks, found $have"

mapfile -d '' envs < $R/env
mapfile -d '' argv < $R/argv
cd "$(cat $R/cwd)" || fail "cannot enter $(cat $R/cwd)"
env "${envs[@]}" "${argv[@]}" > $R/stdout 2> $R/stderr < /dev/null
rc=$?
echo $rc > $R/rc
poweroff_now $rc
