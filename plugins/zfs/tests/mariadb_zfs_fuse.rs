//! MariaDB with its datadir and binary logs on two zfs-fuse datasets, backed up at the
//! backend level: FTWRL, snapshot, unlock, read the frozen copy, start a second server
//! on it, and check it holds exactly what was committed before the lock.
//! (The full `dbsnap backup` end-to-end test lives with the CLI.)

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use dbsnap_backend_api::{SnapshotBackend, SnapshotName};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};
use dbsnap_test_support::zfs_fuse::ZfsFuse;
use dbsnap_zfs::{Zfs, ZfsConfig};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(f)
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("running cp");
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mariadb_datadir_and_binlog_on_two_datasets() {
    let Some(mut zfs) = ZfsFuse::enter("mariadb_datadir_and_binlog_on_two_datasets") else {
        return;
    };
    let pool = zfs.create_pool("dbsnapm");
    zfs.zfs(&["create", &format!("{pool}/mysql")]);
    zfs.zfs(&["create", &format!("{pool}/binlog")]);
    let root = zfs.mount_root(&pool);
    let datadir = root.join("mysql");
    let binlog_dir = root.join("binlog");
    let mut options = ServerOptions::new(&datadir, &zfs.dir().join("run1"));
    options.log_bin = Some(binlog_dir.join("binlog"));
    let server = MariaDb::start(options);
    server.sql(
        "CREATE DATABASE t; CREATE TABLE t.a (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(20)) \
         ENGINE=InnoDB; INSERT INTO t.a (v) SELECT CONCAT('r', seq) FROM t.seq_1_to_1000",
    );

    let backend = Zfs::new(ZfsConfig::default());
    let workdir = zfs.dir().join("work");
    std::fs::create_dir(&workdir).unwrap();
    block_on(async {
        let volumes = backend
            .probe(&[datadir.clone(), binlog_dir.clone()])
            .await
            .unwrap()
            .volumes;
        assert_eq!(volumes.len(), 2);
        let set = backend
            .plan(&volumes, &SnapshotName::new("dbsnap-mariadb").unwrap())
            .await
            .unwrap();

        // Hold FTWRL in one client session across the snapshot.
        let mut client = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", server.socket.display()))
            .args(["-uroot", "-N", "-B", "--unbuffered"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running the mariadb client");
        let mut to_client = client.stdin.take().unwrap();
        let mut from_client = BufReader::new(client.stdout.take().unwrap());
        let locked = Instant::now();
        writeln!(to_client, "FLUSH TABLES WITH READ LOCK; SELECT 'LOCKED';").unwrap();
        let mut line = String::new();
        while line.trim() != "LOCKED" {
            line.clear();
            assert!(from_client.read_line(&mut line).unwrap() > 0, "client quit");
        }
        let snapped = Instant::now();
        backend.snapshot(&set).await.unwrap();
        let snapshot_ms = snapped.elapsed().as_millis();
        writeln!(to_client, "UNLOCK TABLES;").unwrap();
        drop(to_client);
        assert!(client.wait().unwrap().success());
        println!(
            "MEASURE zfs-fuse: snapshot {snapshot_ms} ms, lock held {} ms (FTWRL + 2 snapshots)",
            locked.elapsed().as_millis()
        );
        server.sql("INSERT INTO t.a (v) VALUES ('after-unlock')");

        let paths = backend.mount(&set, &workdir).await.unwrap();
        // The copy a transfer would make, into writable space.
        let copy = zfs.dir().join("copy");
        std::fs::create_dir(&copy).unwrap();
        copy_tree(&paths[0].frozen_root, &copy.join("mysql"));
        copy_tree(&paths[1].frozen_root, &copy.join("binlog"));
        backend.unmount(&set, &workdir).await.unwrap();
        backend.release(&set).await.unwrap();

        let mut options = ServerOptions::new(&copy.join("mysql"), &zfs.dir().join("run2"));
        options.log_bin = Some(copy.join("binlog").join("binlog"));
        options.server_id = 2;
        let restored = MariaDb::start_existing(options);
        assert_eq!(restored.sql("SELECT COUNT(*) FROM t.a"), "1000");
        assert_eq!(
            restored.sql("SELECT COUNT(*) FROM t.a WHERE v = 'after-unlock'"),
            "0"
        );
        assert!(restored.sql("CHECK TABLE t.a").ends_with("OK"));
        restored.stop();
    });
    server.stop();
}
