//! A btrfs filesystem on a loop device, made and mounted for one test.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopBtrfs {
    pub mountpoint: PathBuf,
    image: PathBuf,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopBtrfs {
    /// Make a `size_mib` btrfs in `dir/fs.img` and mount it at `dir/<mount_name>`.
    pub fn new(dir: &Path, mount_name: &str, size_mib: u64) -> LoopBtrfs {
        let image = dir.join("fs.img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(size_mib << 20).unwrap();
        drop(file);
        run("mkfs.btrfs", &["-q", "-f", image.to_str().unwrap()]);
        let mountpoint = dir.join(mount_name);
        std::fs::create_dir_all(&mountpoint).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mountpoint.to_str().unwrap(),
            ],
        );
        LoopBtrfs { mountpoint, image }
    }

    /// Create a subvolume at `mountpoint/name`.
    pub fn subvolume(&self, name: &str) -> PathBuf {
        let path = self.mountpoint.join(name);
        run("btrfs", &["subvolume", "create", path.to_str().unwrap()]);
        path
    }

    /// Subvolumes under the mount point whose path contains `pattern`.
    pub fn subvolumes_matching(&self, pattern: &str) -> Vec<String> {
        let all = Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(&self.mountpoint)
            .output()
            .unwrap();
        String::from_utf8_lossy(&all.stdout)
            .lines()
            .filter(|l| l.contains(pattern))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let m = self.mountpoint.to_str().unwrap().to_string();
        let ok = Command::new("umount")
            .arg(&m)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
