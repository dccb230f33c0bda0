//! Real OpenZFS (2.1, Debian's zfs-dkms) in the TCG guest, for the tests that need what
//! zfs-fuse cannot show: the backend's own (`plugins/zfs/tests/openzfs_guest.rs`) and the
//! `dbsnap` binary's (`tests/openzfs_guest.rs`). The host kernel has no ZFS, so on the host
//! [`OpenZfs::run_suite`] boots the guest once (see [`crate::guest`]) and runs every
//! `in_guest_` test of the calling binary inside; there [`OpenZfs::pool`] makes the pools.
//!
//! The kernel modules and the userland come from `tests/guest/zfs-openzfs-build.sh`
//! (about 4 minutes the first time, then cached), which the launcher runs first. In the
//! guest the userland is copied into the throw-away overlay root and the modules are
//! loaded with insmod; pools live on files in a tmpfs.
//!
//! ```no_run
//! use dbsnap_test_support::openzfs::OpenZfs;
//!
//! const OPENZFS: OpenZfs = OpenZfs {
//!     guest: "openzfs",
//!     suite: "OpenZFS guest suite",
//!     arc_max_mib: None,
//!     tmpfs_mib: 600,
//!     pool_mib: 384,
//! };
//!
//! #[test]
//! fn openzfs_suite() {
//!     OPENZFS.run_suite();
//! }
//!
//! #[test]
//! #[ignore = "runs inside the TCG guest, started by openzfs_suite"]
//! fn in_guest_something() {
//!     let pool = OPENZFS.pool("oz1");
//!     # let _ = pool;
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::guest::{self, Guest};
use crate::sh;

/// Where the build script's output is, passed into the guest.
const ENV_OPENZFS: &str = "DBSNAP_OPENZFS_DIR";
/// A MariaDB datadir initialised on the host (1 s there, 7-13 s under TCG).
const ENV_DATADIR: &str = "DBSNAP_OPENZFS_TEMPLATE_DATADIR";
/// Load order: each module needs the ones before it.
const MODULES: [&str; 9] = [
    "spl", "znvpair", "zcommon", "icp", "zavl", "zlua", "zzstd", "zunicode", "zfs",
];

/// How one test binary runs OpenZFS; the suites differ in what their pools must hold.
#[derive(Debug, Clone, Copy)]
pub struct OpenZfs {
    /// Labels the guest's run directory and messages.
    pub guest: &'static str,
    /// Names the suite in its `MEASURE` line.
    pub suite: &'static str,
    /// `zfs_arc_max` for the zfs module, in MiB; `None` keeps the module's default (half
    /// the RAM). Ignored on a native machine, whose OpenZFS is already loaded.
    pub arc_max_mib: Option<u64>,
    /// Size of the tmpfs each pool's file lives in.
    pub tmpfs_mib: u64,
    /// Size of each pool's (sparse) file.
    pub pool_mib: u64,
}

impl OpenZfs {
    /// On the host: initialise the MariaDB datadir template, build (or find) OpenZFS, boot
    /// the guest and run this binary's `in_guest_` tests in it (`DBSNAP_GUEST_TESTS`
    /// narrows that); panics if any fails.
    pub fn run_suite(&self) {
        let template = tempfile::tempdir().unwrap();
        let datadir = template.path().join("datadir");
        crate::mariadb::install(&datadir);
        let filter = std::env::var("DBSNAP_GUEST_TESTS").unwrap_or_else(|_| "in_guest_".into());
        let mut guest = Guest::new(self.guest)
            .env(ENV_DATADIR, &datadir.to_string_lossy())
            .memory_mib(2048);
        if std::env::var_os("DBSNAP_GUEST_NATIVE").is_some() {
            // A throw-away machine (vagrant/) runs its own OpenZFS, installed from packages.
            guest = guest.module("zfs");
        } else {
            guest = guest.env(ENV_OPENZFS, &build());
        }
        let run = guest.run_this_binary(&["--include-ignored", &filter]);
        println!(
            "MEASURE {}: {:.1} s wall (job started at {:?} s uptime)",
            self.suite,
            run.wall.as_secs_f64(),
            run.boot_seconds
        );
        run.assert_success();
    }

    /// In the guest: install OpenZFS (once per boot), then make a pool on a file in a
    /// tmpfs of its own.
    pub fn pool(&self, name: &str) -> Pool {
        guest::require_guest();
        self.install();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available = meminfo.lines().find(|l| l.starts_with("MemAvailable"));
        println!("MEASURE guest memory before pool {name}: {available:?}");
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        let files = files.to_string_lossy().into_owned();
        let size = format!("size={}m", self.tmpfs_mib);
        sh("mount", &["-t", "tmpfs", "-o", &size, "zfs-files", &files]);
        let image = format!("{files}/{name}.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(self.pool_mib << 20))
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

    /// In the TCG guest: copy the userland into the throw-away overlay root (shadowing the
    /// host's zfs-fuse commands only there) and insmod the modules, once per boot. On a
    /// native machine the harness has already loaded its own OpenZFS.
    fn install(&self) {
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
            let mut args = vec![format!("{dir}/ko/{m}.ko")];
            if let (Some(mib), "zfs") = (self.arc_max_mib, m) {
                args.push(format!("zfs_arc_max={}", mib << 20));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sh("insmod", &args);
        }
        println!(
            "MEASURE OpenZFS userland + insmod in guest: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
}

/// In the guest: the MariaDB datadir [`OpenZfs::run_suite`] initialised on the host; copy
/// it, it is shared by every test of the run.
pub fn template_datadir() -> PathBuf {
    std::env::var_os(ENV_DATADIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{ENV_DATADIR} is not set; is this the guest of run_suite?"))
}

/// The output directory of tests/guest/zfs-openzfs-build.sh (a cache hit after its first
/// run; it fails loudly when the modules cannot be built).
fn build() -> String {
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

/// A pool on a file in a tmpfs of its own, made by [`OpenZfs::pool`]. Dropping it destroys
/// the pool and unmounts the tmpfs, so declare it before anything that uses the pool (a
/// server, a sandbox): those are dropped first.
pub struct Pool {
    pub name: String,
    /// Where the pool's root dataset is mounted.
    pub root: PathBuf,
    dir: tempfile::TempDir,
}

impl Pool {
    /// A scratch directory beside the pool (not in it), removed with the pool.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
