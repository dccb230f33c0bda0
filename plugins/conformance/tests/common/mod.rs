//! Fixtures shared by the conformance test targets.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount point name a backend must treat as just a name.
pub const HOSTILE_MOUNT: &str = "mnt $(touch pwned) ;'q' \"d\" `x` &";

pub fn run(argv: &[&Path]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The reference plugins in plugins/examples.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
