//! `dbsnap backup` end to end on real OpenZFS (2.1, Debian's zfs-dkms), which the host
//! kernel lacks: `openzfs_backup_suite` boots the TCG guest once and runs every
//! `in_guest_` test of this binary inside (see `dbsnap_test_support::guest`).
//!
//! What only OpenZFS shows: both datasets are snapshotted in ONE `zfs snapshot` call (one
//! transaction group), so the manifest says `atomic = true` and `--lock none` is accepted
//! for an InnoDB-only schema; and the copy reads `.zfs/snapshot/<name>` instead of a
//! clone (a clone on request, `read_via = "clone"`).
//!
//! The modules and userland come from `tests/guest/zfs-openzfs-build.sh` (cached; CI runs
//! it as its own step first, so its minutes show up there and not here).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::zfs::{sh, Binlogs, ZfsSandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::guest::{self, Guest};

/// Where the build script's output is, passed into the guest.
const ENV_OPENZFS: &str = "DBSNAP_OPENZFS_DIR";
/// A MariaDB datadir initialised on the host (1 s there, 7-13 s under TCG).
const ENV_DATADIR: &str = "DBSNAP_OPENZFS_TEMPLATE_DATADIR";
/// Load order: each module needs the ones before it.
const MODULES: [&str; 9] = [
    "spl", "znvpair", "zcommon", "icp", "zavl", "zlua", "zzstd", "zunicode", "zfs",
];

#[test]
fn openzfs_backup_suite() {
    let template = tempfile::tempdir().unwrap();
    let datadir = template.path().join("datadir");
    dbsnap_test_support::mariadb::install(&datadir);
    let filter = std::env::var("DBSNAP_GUEST_TESTS").unwrap_or_else(|_| "in_guest_".into());
    let mut guest = Guest::new("openzfs-backup")
        .env(ENV_DATADIR, &datadir.to_string_lossy())
        .memory_mib(2048);
    if std::env::var_os("DBSNAP_GUEST_NATIVE").is_some() {
        // A throw-away machine (vagrant/) runs its own OpenZFS, installed from packages.
        guest = guest.module("zfs");
    } else {
        guest = guest.env(ENV_OPENZFS, &openzfs_build());
    }
    let run = guest.run_this_binary(&["--include-ignored", &filter]);
    println!(
        "MEASURE OpenZFS backup suite: {:.1} s wall (job started at {:?} s uptime)",
        run.wall.as_secs_f64(),
        run.boot_seconds
    );
    run.assert_success();
}

/// The output directory of tests/guest/zfs-openzfs-build.sh (a cache hit after its first
/// run; it fails loudly when the modules cannot be built).
fn openzfs_build() -> String {
    let started = Instant::now();
    let script = guest::guest_files().join("zfs-openzfs-build.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (it needs root, linux-headers-amd64 and Debian's contrib component; \
         see scripts/install-deps.sh):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "MEASURE OpenZFS build (or cache hit): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// In the TCG guest: copy the userland into the throw-away overlay root (shadowing the
/// host's zfs-fuse commands only there) and insmod the modules, once per boot.
fn install_openzfs() {
    let Ok(dir) = std::env::var(ENV_OPENZFS) else {
        assert!(
            Path::new("/sys/module/zfs").exists(),
            "no OpenZFS kernel module on this machine"
        );
        return;
    };
    if Path::new("/sys/module/zfs").exists() {
        return;
    }
    let t = Instant::now();
    sh("cp", &["-a", &format!("{dir}/root/."), "/"]);
    for m in MODULES {
        sh("insmod", &[&format!("{dir}/ko/{m}.ko")]);
    }
    println!(
        "MEASURE OpenZFS userland + insmod in guest: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A pool on a file in a tmpfs of its own. Dropping it destroys the pool and unmounts
/// the tmpfs. Declared before the sandbox it holds, so it is dropped after the server.
struct Pool {
    name: String,
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Pool {
    fn create(name: &str) -> Pool {
        guest::require_guest();
        install_openzfs();
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        let files = files.to_string_lossy().into_owned();
        sh(
            "mount",
            &["-t", "tmpfs", "-o", "size=700m", "zfs-files", &files],
        );
        let image = format!("{files}/{name}.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(640 << 20))
            .unwrap();
        let root = dir.path().join("mnt");
        sh(
            "zpool",
            &["create", "-m", &root.to_string_lossy(), name, &image],
        );
        Pool {
            name: name.to_string(),
            root,
            dir,
        }
    }

    /// A MariaDB on two datasets of this pool; `zfs` is the `[snapshot.zfs]` section.
    fn sandbox(&self, binlogs: Binlogs, zfs: &str) -> ZfsSandbox {
        let template = std::env::var(ENV_DATADIR).expect("DBSNAP_OPENZFS_TEMPLATE_DATADIR");
        let scratch = self.dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        ZfsSandbox::new(
            &self.name,
            &self.root,
            &scratch,
            binlogs,
            Path::new(&template),
            zfs,
        )
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("zpool")
            .args(["destroy", "-f", &self.name])
            .status();
        let _ = Command::new("umount")
            .arg(self.dir.path().join("files"))
            .status();
    }
}

/// `[hooks]` that append the path the copy reads the datadir from to `file`.
fn record_read_path(file: &Path) -> String {
    let script = format!("echo \"$DBSNAP_SNAPSHOT_PATH\" >> '{}'", file.display());
    format!("[hooks]\npost_snapshot = [\"/bin/sh\", \"-c\", {script:?}]\n")
}

/// The last path recorded by [`record_read_path`].
fn last_read_path(file: &Path) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    PathBuf::from(text.lines().last().unwrap())
}

/// The log line(s) of the `zfs snapshot` calls.
fn snapshot_calls(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("zfs snapshot")).collect()
}

#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_backup_under_load_is_atomic_and_reads_the_snapdir() {
    let t = Instant::now();
    let pool = Pool::create("ozb1");
    let sb = pool.sandbox(Binlogs::ChildOfDatadir, "");
    let paths = sb.dir.join("read-paths");
    sb.write_config("", &record_read_path(&paths));
    bank::create(&sb.server);
    let (manifest, log) = sb.backup_and_verify(&[], true);
    assert_eq!(manifest["snapshot"]["atomic"], true);
    // MyISAM present: auto still locks (BACKUP STAGE), and the coordinates are exact.
    assert_eq!(manifest["lock"]["mode"], "backup-stage");
    assert_eq!(manifest["coordinates"]["exact"], true);
    // Both datasets in ONE call (one transaction group).
    let calls = snapshot_calls(&log);
    assert_eq!(calls.len(), 1, "{log}");
    assert!(
        sb.datasets.iter().all(|d| calls[0].contains(d.as_str())),
        "{calls:?}"
    );
    let name = manifest["name"].as_str().unwrap();
    assert_eq!(
        last_read_path(&paths),
        sb.datadir.join(format!(".zfs/snapshot/dbsnap-{name}"))
    );
    drop(sb);
    println!(
        "MEASURE OpenZFS end to end (backup-stage, snapdir): {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_lock_none_on_an_atomic_snapshot_is_crash_consistent_snapdir_and_clone() {
    let t = Instant::now();
    let pool = Pool::create("ozb2");
    let sb = pool.sandbox(Binlogs::Separate, "");
    let paths = sb.dir.join("read-paths");
    bank::create(&sb.server);
    // MyISAM makes `none` unsafe even on an atomic snapshot: refused, nothing left.
    let out = sb.dbsnap(&["backup", "--lock", "none"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    sb.server.sql(
        "DROP TABLE bank.audit; CREATE TABLE bank.audit (client INT NOT NULL, seq INT NOT NULL, \
         PRIMARY KEY (client, seq)) ENGINE=InnoDB",
    );

    for (read_via, clone) in [("auto", false), ("clone", true)] {
        sb.write_config(
            &format!("read_via = {read_via:?}"),
            &record_read_path(&paths),
        );
        let (manifest, log) = sb.backup_and_verify(&["--lock", "none"], false);
        assert_eq!(manifest["lock"]["mode"], "none");
        assert_eq!(manifest["snapshot"]["atomic"], true);
        assert_eq!(manifest["coordinates"]["exact"], false);
        assert_eq!(snapshot_calls(&log).len(), 1, "{log}");
        let read = last_read_path(&paths);
        if clone {
            assert!(read.starts_with(sb.state.join("runs")), "{read:?}");
        } else {
            let name = manifest["name"].as_str().unwrap();
            assert_eq!(
                read,
                sb.datadir.join(format!(".zfs/snapshot/dbsnap-{name}"))
            );
        }
    }
    drop(sb);
    println!(
        "MEASURE OpenZFS end to end (lock none, snapdir then clone): {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
