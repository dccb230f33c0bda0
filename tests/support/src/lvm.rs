//! LVM on real device-mapper in the TCG guest, for the backend's own tests
//! (`plugins/lvm/tests/guest_lvm.rs`) and the `dbsnap` binary's (`tests/lvm_guest.rs`):
//! the suite launcher, and a volume group on a guest disk that cleans up after itself.
//!
//! ```no_run
//! use dbsnap_test_support::lvm::{self, TestVg};
//!
//! #[test]
//! fn lvm_suite() {
//!     lvm::run_suite("lvm", &["xfs"]).assert_success();
//! }
//!
//! #[test]
//! #[ignore = "runs inside the TCG guest, started by lvm_suite"]
//! fn in_guest_something() {
//!     dbsnap_test_support::guest::require_guest();
//!     let vg = TestVg::new("xfs", "dbtxfs");
//!     let origin = vg.lv("data", "320M", "xfs"); // mounted at /srv/dbtxfs-data
//!     # let _ = origin;
//! }
//! ```

use std::path::PathBuf;
use std::process::Command;

use crate::guest::{self, Guest, GuestRun};

/// On the host: boot the guest with one 1 GiB disk per name in `disks` (one per test, so
/// that no test sees another's VG) and run this binary's `in_guest_` tests in it
/// (`DBSNAP_GUEST_TESTS` narrows that). The caller reports and asserts on the result.
pub fn run_suite(guest_name: &str, disks: &[&str]) -> GuestRun {
    // The MariaDB datadir template is made on the host (1 s) rather than in the guest
    // (7-13 s); the guest reads the host's temp dir, template included, through its root.
    let warm = tempfile::tempdir().unwrap();
    crate::mariadb::install(&warm.path().join("datadir"));
    let filter = std::env::var("DBSNAP_GUEST_TESTS").unwrap_or_else(|_| "in_guest_".into());
    let mut guest = Guest::new(guest_name);
    for disk in disks {
        guest = guest.disk(disk, 1024);
    }
    // Classic and thin snapshots, and the filesystems the tests put on the LVs.
    guest
        .module("dm_snapshot")
        .module("dm_thin_pool")
        .module("xfs")
        .module("ext4")
        .run_this_binary(&["--include-ignored", &filter])
}

/// Run a command; panic with its output if it fails.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?} could not start: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run the commands in the instructions of a rollback left pending (`... then run: A; B
/// (or reboot) ...`, as the LVM backend words it and `dbsnap` prints it), as a user would.
pub fn follow_pending(instructions: &str) {
    let steps = instructions
        .split("then run: ")
        .nth(1)
        .and_then(|rest| rest.split(" (or reboot)").next())
        .unwrap_or_else(|| panic!("no commands in {instructions:?}"));
    for step in steps.split("; ") {
        let argv: Vec<&str> = step.split_whitespace().collect();
        run(&argv);
    }
}

/// A volume group on one guest disk, torn down (mounts, LVs, VG, PV) when dropped, so a
/// failing test does not leave its VG to the next one.
pub struct TestVg {
    vg: String,
    dev: PathBuf,
}

impl TestVg {
    /// In the guest: make the disk added as `disk` a PV and put the VG `vg` on it.
    pub fn new(disk: &str, vg: &str) -> TestVg {
        let dev = guest::disk(disk);
        let dev_str = dev.to_str().unwrap();
        run(&["pvcreate", "-q", dev_str]);
        run(&["vgcreate", "-q", vg, dev_str]);
        TestVg { vg: vg.into(), dev }
    }

    /// The VG's name.
    pub fn name(&self) -> &str {
        &self.vg
    }

    /// A plain LV with a filesystem, mounted at `/srv/<vg>-<name>`.
    pub fn lv(&self, name: &str, size: &str, fstype: &str) -> PathBuf {
        run(&["lvcreate", "-q", "-y", "-L", size, "-n", name, &self.vg]);
        self.format_and_mount(name, fstype)
    }

    /// A thin pool `name` of `size` in the VG.
    pub fn thin_pool(&self, name: &str, size: &str) {
        let pool = format!("{}/{name}", self.vg);
        run(&["lvcreate", "-q", "-y", "-L", size, "-T", &pool]);
    }

    /// A thin LV in the thin pool `pool` with a filesystem, mounted at `/srv/<vg>-<name>`.
    pub fn thin_lv(&self, pool: &str, name: &str, virtual_size: &str, fstype: &str) -> PathBuf {
        let pool = format!("{}/{pool}", self.vg);
        run(&[
            "lvcreate",
            "-q",
            "-y",
            "-V",
            virtual_size,
            "-T",
            &pool,
            "-n",
            name,
        ]);
        self.format_and_mount(name, fstype)
    }

    fn format_and_mount(&self, name: &str, fstype: &str) -> PathBuf {
        let dev = format!("/dev/{}/{name}", self.vg);
        run(&[&format!("mkfs.{fstype}"), "-q", &dev]);
        let at = PathBuf::from(format!("/srv/{}-{name}", self.vg));
        std::fs::create_dir_all(&at).unwrap();
        run(&["mount", &dev, at.to_str().unwrap()]);
        at
    }

    /// The names of the VG's visible LVs.
    pub fn lv_names(&self) -> Vec<String> {
        run(&["lvs", "--noheadings", "-o", "lv_name", &self.vg])
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }
}

impl Drop for TestVg {
    fn drop(&mut self) {
        // Mounts of the VG's LVs (snapshots included), innermost first.
        let prefix = format!("/dev/mapper/{}-", self.vg.replace('-', "--"));
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let source = f.next()?;
                let point = f.next()?;
                source.starts_with(&prefix).then_some(point)
            })
            .collect();
        points.reverse();
        for point in points {
            let _ = Command::new("umount").arg(point).status();
        }
        let _ = Command::new("vgremove")
            .args(["-q", "-ff", &self.vg])
            .status();
        let _ = Command::new("pvremove").arg("-q").arg(&self.dev).status();
    }
}
