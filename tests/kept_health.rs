//! Kept and hook-mode snapshots are health-checked: a snapshot that became invalid
//! while kept (an LVM snapshot that overflowed while a backup tool read it) makes
//! `snapshot release` fail with its own exit code, and `snapshot list` shows it.

mod common;

use std::path::{Path, PathBuf};

use common::{stderr, stdout_json, Sandbox};
use dbsnap_test_support::bank;

/// The shell btrfs reference plugin, except that `health` reports the snapshot lost
/// once `dir/lost` exists: what an overflowed classic LVM snapshot reports.
fn plugin_that_can_lose_snapshots(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/examples/dbsnap-backend-btrfs-sh");
    let script = plugins.join("dbsnap-backend-lossy");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = health ] && [ -e '{}' ]; then cat >/dev/null; \
             echo '{{\"status\": \"failed\", \"message\": \"snapshot overflowed (100 % of its CoW space used)\"}}'; exit 0; fi\n\
             exec '{}' \"$@\"\n",
            dir.join("lost").display(),
            reference.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    plugins
}

#[test]
fn releasing_a_kept_snapshot_that_became_invalid_exits_13_and_list_shows_it() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let plugins = plugin_that_can_lose_snapshots(sb.dir.path());
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        "[snapshot]\nbackend = \"btrfs\"",
        &format!("[snapshot]\nbackend = \"exec:lossy\"\n[snapshot.exec]\nplugin_dir = {plugins:?}"),
    );
    sb.write_raw_config(&config);
    let mnt = sb.dir.path().join("hook mnt");
    std::fs::create_dir(&mnt).unwrap();

    let out = sb.dbsnap(&[
        "snapshot",
        "create",
        "--mount",
        mnt.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();
    let out = sb.dbsnap(&["snapshot", "list", "--json"]);
    assert_eq!(stdout_json(&out)[0]["health"]["status"], "ok");

    // While the outside tool reads the mount, the snapshot is lost.
    std::fs::write(sb.dir.path().join("lost"), b"").unwrap();
    let out = sb.dbsnap(&["snapshot", "list", "--json"]);
    let listed = stdout_json(&out);
    assert_eq!(listed[0]["name"], name.as_str());
    assert_eq!(listed[0]["health"]["status"], "failed", "{listed}");
    let out = sb.dbsnap(&["snapshot", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HEALTH") && text.contains("failed") && text.contains("overflowed"),
        "{text}"
    );

    let out = sb.dbsnap(&["snapshot", "release", mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("become invalid while kept") && err.contains("overflowed"),
        "{err}"
    );
    assert!(err.contains(mnt.to_str().unwrap()), "{err}");
    // Released all the same: nothing is left to pin space.
    let out = sb.dbsnap(&["snapshot", "list", "--json"]);
    assert_eq!(stdout_json(&out).as_array().unwrap().len(), 0);
    assert!(sb.fs.subvolumes_matching("dbsnap-").is_empty());
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());

    // A healthy one still releases with 0.
    std::fs::remove_file(sb.dir.path().join("lost")).unwrap();
    let out = sb.dbsnap(&["snapshot", "create", "--label", "fine", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();
    assert!(sb.dbsnap(&["snapshot", "release", &name]).status.success());
}
