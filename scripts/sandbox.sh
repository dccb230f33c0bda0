#!/usr/bin/env bash
# A disposable sandbox: a btrfs filesystem on a loop device, a MariaDB server on it
# with sample data, and a real `dbsnap backup` of it under write load.
#
#   scripts/sandbox.sh [DIR]            set up (first time), back up, print the manifest
#   scripts/sandbox.sh --destroy [DIR]  stop the server, unmount, delete DIR
#
# DIR defaults to ./sandbox. Run as root on Debian/Ubuntu. Nothing outside DIR is
# touched except the packages installed by scripts/install-deps.sh --sandbox.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

destroy=0
if [ "${1:-}" = "--destroy" ]; then destroy=1; shift; fi
dir=$(realpath -m "${1:-$repo/sandbox}")
mnt="$dir/btrfs"
run="$dir/run"
socket="$run/mysqld.sock"

stop_server() {
    if [ -f "$run/mysqld.pid" ] && kill -0 "$(cat "$run/mysqld.pid")" 2>/dev/null; then
        kill "$(cat "$run/mysqld.pid")"
        while kill -0 "$(cat "$run/mysqld.pid" 2>/dev/null)" 2>/dev/null; do sleep 0.2; done
    fi
}

if [ $destroy -eq 1 ]; then
    stop_server
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    rm -rf "$dir"
    echo "sandbox $dir removed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then echo "run as root (it mounts a loop device)" >&2; exit 1; fi

bash "$repo/scripts/install-deps.sh" --sandbox
(cd "$repo" && cargo build --release --locked)
dbsnap="$repo/target/release/dbsnap"

mkdir -p "$dir" "$run" "$dir/backups"
if ! mountpoint -q "$mnt"; then
    if [ ! -f "$dir/btrfs.img" ]; then
        truncate -s 2G "$dir/btrfs.img"
        mkfs.btrfs -q "$dir/btrfs.img"
    fi
    mkdir -p "$mnt"
    mount -o loop "$dir/btrfs.img" "$mnt"
fi

fresh=0
if [ ! -d "$mnt/mysql" ]; then
    btrfs subvolume create "$mnt/mysql" >/dev/null
    # mariadb-install-db mishandles paths with spaces: initialise in a plain directory, then copy.
    init=$(mktemp -d)
    mariadb-install-db --no-defaults --datadir="$init/data" --user=root \
        --auth-root-authentication-method=normal --skip-test-db >/dev/null
    cp -a "$init/data/." "$mnt/mysql/"
    rm -rf "$init"
    fresh=1
fi

if ! [ -S "$socket" ] || ! mariadb --no-defaults --socket="$socket" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    mariadbd --no-defaults --user=root --datadir="$mnt/mysql" --socket="$socket" \
        --pid-file="$run/mysqld.pid" --log-error="$run/error.log" --skip-networking \
        --log-bin="$mnt/mysql/binlog" --server-id=1 --innodb-buffer-pool-size=128M &
    for _ in $(seq 100); do
        mariadb --no-defaults --socket="$socket" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
sql() { mariadb --no-defaults --socket="$socket" -uroot -e "$1"; }

if [ $fresh -eq 1 ]; then
    echo "loading sample data ..."
    sql "CREATE DATABASE shop;
         CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(64), balance BIGINT) ENGINE=InnoDB;
         CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT, total INT, pad BLOB) ENGINE=InnoDB;
         CREATE TABLE shop.audit (at DATETIME, what VARCHAR(200)) ENGINE=MyISAM;
         INSERT INTO shop.customers SELECT seq, CONCAT('customer ', seq), 1000 FROM shop.seq_1_to_10000;
         INSERT INTO shop.orders (customer, total, pad) SELECT seq % 10000 + 1, seq % 977, RANDOM_BYTES(1024) FROM shop.seq_1_to_100000;
         INSERT INTO shop.audit VALUES (NOW(), 'sandbox created');"
    # The backup user's password lives only in a 0600 option file, as in production.
    pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    sql "CREATE USER 'dbsnap'@'localhost' IDENTIFIED BY '$pw';
         GRANT RELOAD, BINLOG MONITOR, SLAVE MONITOR, PROCESS, SHOW VIEW, CONNECTION ADMIN ON *.* TO 'dbsnap'@'localhost';"
    umask 077
    printf '[client]\nuser = dbsnap\npassword = %s\n' "$pw" > "$dir/client.cnf"
    umask 022
    cat > "$dir/dbsnap.toml" <<TOML
# dbsnap configuration for the sandbox; see the README for every key.
state_dir = "$dir/state"

[mysql]
socket = "$socket"
defaults_file = "$dir/client.cnf"

[snapshot]
backend = "btrfs"

[backup]
dest = "$dir/backups"
TOML
fi

echo
echo "== dbsnap check"
"$dbsnap" --config "$dir/dbsnap.toml" check

echo
echo "== dbsnap backup (while a writer inserts orders)"
( for i in $(seq 2000); do
      sql "INSERT INTO shop.orders (customer, total) VALUES ($((i % 10000 + 1)), $i)" 2>/dev/null || break
  done ) &
writer=$!
"$dbsnap" --config "$dir/dbsnap.toml" backup
kill $writer 2>/dev/null || true
wait $writer 2>/dev/null || true

echo
echo "== dbsnap list"
"$dbsnap" --config "$dir/dbsnap.toml" list
latest=$(ls -d "$dir"/backups/*/ | sort | tail -n 1)
echo
echo "== ${latest}manifest.toml"
cat "${latest}manifest.toml"
echo
echo "The server is still running on $socket. Back up again with:"
echo "  $dbsnap --config $dir/dbsnap.toml backup"
echo "Remove everything with:"
echo "  $repo/scripts/sandbox.sh --destroy $dir"
