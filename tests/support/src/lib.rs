//! Test helpers shared by dbsnap's integration tests and the backends' own tests.
//! Everything here drives the real thing: real servers, real filesystems, real VMs.
pub mod bank;
pub mod btrfs;
pub mod guest;
pub mod lvm;
pub mod mariadb;
pub mod netns;
pub mod openzfs;
pub mod sshd;
pub mod zfs_fuse;

use std::process::Command;

/// Run a command; panic with its stderr unless it succeeds. Returns stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
