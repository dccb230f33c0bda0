//! The fsfreeze example plugin, with the loop-image snapshot command, on an ext4 loop
//! filesystem whose mount point has a hostile name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dbsnap_conformance::{run_all, Fixture};
use dbsnap_exec::{Exec, ExecConfig};

use common::run;

#[tokio::test]
async fn fsfreeze_plugin_conforms() {
    let tmp = tempfile::Builder::new()
        .prefix("dbsnap conformance ")
        .tempdir()
        .unwrap();
    let fs = LoopExt4::new(tmp.path(), common::HOSTILE_MOUNT, 64);
    let data = fs.mountpoint.join("data dir");
    std::fs::create_dir(&data).unwrap();
    let store = tmp.path().join("image store $(touch pwned)");
    let workdir = tmp.path().join("work dir");
    std::fs::create_dir(&workdir).unwrap();

    let mut config = ExecConfig {
        plugin_dir: Some(common::examples_dir()),
        ..Default::default()
    };
    let command = common::examples_dir().join("fsfreeze-loop-image");
    config.options.insert(
        "snapshot_command".into(),
        serde_json::json!([command, store]),
    );
    config.options.insert("max_freeze".into(), 5.into());
    let backend = Exec::new("fsfreeze", config).unwrap();
    let fixture = Fixture {
        data_dirs: vec![data],
        workdir,
        unsupported_dir: Some(tmp.path().to_path_buf()),
    };
    let report = run_all(&backend, &fixture).await;
    println!("{report}");

    // The filesystem is thawed: a write to it completes.
    let probe = fs.mountpoint.join("thawed");
    let status = Command::new("timeout")
        .args(["5", "touch"])
        .arg(&probe)
        .status()
        .unwrap();
    assert!(status.success(), "the filesystem was left frozen");
    assert!(!Path::new("pwned").exists());
    report.assert_passed();
    let left: Vec<_> = std::fs::read_dir(&store)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "images left in the store: {left:?}");
}

/// An ext4 filesystem on a loop device, mounted for one test; unmounted (and the loop
/// device freed) on drop.
struct LoopExt4 {
    mountpoint: PathBuf,
}

impl LoopExt4 {
    fn new(dir: &Path, mount_name: &str, size_mib: u64) -> LoopExt4 {
        let image = dir.join("ext4.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        run(&[Path::new("mkfs.ext4"), Path::new("-q"), &image]);
        let mountpoint = dir.join(mount_name);
        std::fs::create_dir_all(&mountpoint).unwrap();
        run(&[
            Path::new("mount"),
            Path::new("-o"),
            Path::new("loop"),
            &image,
            &mountpoint,
        ]);
        LoopExt4 { mountpoint }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        // A filesystem left frozen by a failed test would make umount hang.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.mountpoint)
            .output();
        let ok = Command::new("umount")
            .arg(&self.mountpoint)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
