//! The adapter against tiny fake plugins: every way a plugin can misbehave must become
//! an error that names the plugin and says what went wrong.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dbsnap_backend_api::{BackendError, SnapshotBackend, SnapshotName, Volume};
use dbsnap_exec::{Exec, ExecConfig, Timeouts};

/// A plugin that answers `version` correctly and runs BODY for every other verb.
fn speaks_v1(body: &str) -> String {
    format!(
        "#!/bin/sh\nif [ \"$1\" = version ]; then echo '{{\"supported_versions\": [1]}}'; exit 0; fi\n{body}\n"
    )
}

/// Every fake plugin, written once before any test starts a process: a file being
/// written while another thread forks cannot then be executed ("Text file busy").
fn fakes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec fakes; $(x)");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = r#"
cat > "$(dirname "$0")/last request.$1.json"
case "$1" in
probe) echo '{"volumes": [{"id": "vol", "root": "/", "fstype": "fake"}], "atomic": true}' ;;
plan) echo '{"snapshots": [{"id": "vol@x", "volume": {"id": "vol", "root": "/", "fstype": "fake"}}]}' ;;
snapshot|release|unmount) echo '{}' ;;
mount) echo '{"read_paths": [{"origin_root": "/", "frozen_root": "/frozen"}]}' ;;
list) echo '{"sets": [{"name": "dbsnap-x", "snapshots": []}]}' ;;
health) echo '{"status": "warning", "message": "90% used"}' ;;
*) echo '{"error": {"code": "unknown_verb", "message": "no such verb"}}' ;;
esac"#;
        let plugins = [
            ("good", speaks_v1(good)),
            ("garbage", speaks_v1("echo 'this is not json'")),
            ("two-docs", speaks_v1("echo '{}'; echo '{}'")),
            ("silent", speaks_v1("exit 0")),
            ("hangs", speaks_v1("exec sleep 30")),
            ("crashes", speaks_v1("echo 'disk on fire' >&2; exit 3")),
            ("future", "#!/bin/sh\necho '{\"supported_versions\": [7, 8]}'\n".into()),
            ("no-version", "#!/bin/sh\necho '{\"error\": {\"code\": \"unknown_verb\", \"message\": \"what\"}}'\n".into()),
            ("wrong-shape", speaks_v1("echo '{\"volumes\": \"all of them\"}'")),
            ("elsewhere", speaks_v1(
                "echo '{\"volumes\": [{\"id\": \"v\", \"root\": \"/elsewhere\", \"fstype\": \"x\"}]}'",
            )),
            ("unsupported", speaks_v1(
                r#"echo '{"error": {"code": "unsupported", "message": "it is on tmpfs", "hint": "move it to a SAN volume", "path": "/var/lib/mysql"}}'"#,
            )),
            ("fails", speaks_v1(
                r#"echo 'the API said 503' >&2; echo '{"error": {"code": "failed", "message": "snapshot API unavailable", "hint": "retry later"}}'"#,
            )),
            ("bad-error", speaks_v1(r#"echo '{"error": "oops"}'"#)),
            ("short-plan", speaks_v1(r#"echo '{"snapshots": []}'"#)),
            ("foreign-list", speaks_v1(
                r#"echo '{"sets": [{"name": "backup-by-hand", "snapshots": []}]}'"#,
            )),
        ];
        for (name, text) in plugins {
            let path = dir.join(format!("dbsnap-backend-{name}"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.join("dbsnap-backend-not-executable"), "#!/bin/sh\n").unwrap();
        dir
    })
}

fn exec(name: &str) -> Exec {
    exec_with(name, ExecConfig::default())
}

fn exec_with(name: &str, mut config: ExecConfig) -> Exec {
    config.plugin_dir = Some(fakes().to_path_buf());
    Exec::new(name, config).unwrap()
}

fn volume() -> Volume {
    Volume {
        id: "vol".into(),
        root: "/".into(),
        fstype: "fake".into(),
    }
}

async fn probe_error(name: &str) -> String {
    exec(name)
        .probe(&[PathBuf::from("/var/lib/mysql")])
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn a_good_plugin_round_trips_every_verb() {
    let mut config = ExecConfig::default();
    config
        .options
        .insert("pool".into(), "tank; rm -rf /".into());
    let backend = exec_with("good", config);
    assert_eq!(backend.name(), "exec:good");
    let hostile = PathBuf::from("/var/lib/my sql/$(touch pwned)/'\"`x`");
    let probed = backend.probe(std::slice::from_ref(&hostile)).await.unwrap();
    assert_eq!(probed.volumes, vec![volume()]);
    assert!(probed.atomic);
    let volumes = probed.volumes;

    let request: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fakes().join("last request.probe.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(request["protocol_version"], 1);
    assert_eq!(request["config"]["pool"], "tank; rm -rf /");
    assert_eq!(request["paths"][0], hostile.to_str().unwrap());

    let name = SnapshotName::new("dbsnap-x").unwrap();
    let set = backend.plan(&volumes, &name).await.unwrap();
    assert_eq!(set.backend, "exec:good");
    assert_eq!(set.snapshots[0].id, "vol@x");
    backend.snapshot(&set).await.unwrap();
    let paths = backend.mount(&set, Path::new("/work dir")).await.unwrap();
    assert_eq!(paths[0].frozen_root, PathBuf::from("/frozen"));
    backend.unmount(&set, Path::new("/work dir")).await.unwrap();
    backend.release(&set).await.unwrap();
    let listed = backend.list(&volumes).await.unwrap();
    assert_eq!(listed[0].name.as_str(), "dbsnap-x");
    assert!(matches!(
        backend.health(&set).await.unwrap(),
        dbsnap_backend_api::Health::Warning(m) if m == "90% used"
    ));
    let request: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fakes().join("last request.unmount.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(request["workdir"], "/work dir");
    assert_eq!(request["set"]["name"], "dbsnap-x");
    assert_eq!(request["set"]["snapshots"][0]["id"], "vol@x");
}

#[test]
fn a_missing_plugin_says_where_it_looked() {
    let config = ExecConfig {
        plugin_dir: Some(fakes().to_path_buf()),
        ..Default::default()
    };
    let err = Exec::new("nowhere", config).err().unwrap().to_string();
    assert!(err.contains("dbsnap-backend-nowhere"), "{err}");
    assert!(err.contains("was not found in"), "{err}");
    assert!(err.contains("or on PATH"), "{err}");
    assert!(err.contains("plugin_dir"), "{err}");
}

#[test]
fn a_plugin_that_is_not_executable_is_named() {
    let config = ExecConfig {
        plugin_dir: Some(fakes().to_path_buf()),
        ..Default::default()
    };
    let err = Exec::new("not-executable", config)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("chmod +x"), "{err}");
}

#[test]
fn hostile_plugin_names_are_refused() {
    for bad in ["a;b", "../btrfs", "a b", "", "$(id)", "-x"] {
        let err = Exec::new(bad, ExecConfig::default()).err();
        assert!(
            matches!(err, Some(BackendError::Invalid(_))),
            "{bad:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn garbage_on_stdout_is_shown() {
    let err = probe_error("garbage").await;
    assert!(err.contains("not one JSON object"), "{err}");
    assert!(err.contains("this is not json"), "{err}");
    let err = probe_error("two-docs").await;
    assert!(err.contains("not one JSON object"), "{err}");
}

#[tokio::test]
async fn no_response_is_an_error() {
    let err = probe_error("silent").await;
    assert!(err.contains("printed no response"), "{err}");
}

#[tokio::test]
async fn a_hanging_plugin_is_killed_at_its_verbs_timeout() {
    let config = ExecConfig {
        timeouts: Timeouts {
            probe: Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    };
    let started = Instant::now();
    let err = exec_with("hangs", config)
        .probe(&[PathBuf::from("/")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("killed"), "{err}");
    assert!(err.contains("[snapshot.exec.timeouts] probe"), "{err}");
}

#[tokio::test]
async fn a_crash_carries_exit_status_and_stderr() {
    let err = probe_error("crashes").await;
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("disk on fire"), "{err}");
}

#[tokio::test]
async fn incompatible_protocol_versions_are_explained() {
    let err = probe_error("future").await;
    assert!(err.contains("speaks protocol versions [7, 8]"), "{err}");
    let err = probe_error("no-version").await;
    assert!(err.contains("unknown_verb"), "{err}");
    assert!(err.contains("`version`"), "{err}");
}

#[tokio::test]
async fn malformed_responses_are_refused() {
    let err = probe_error("wrong-shape").await;
    assert!(err.contains("malformed `probe` response"), "{err}");
    let err = probe_error("elsewhere").await;
    assert!(
        err.contains("no volume it returned contains /var/lib/mysql"),
        "{err}"
    );
    let err = probe_error("bad-error").await;
    assert!(err.contains("malformed error response"), "{err}");
    let err = exec("short-plan")
        .plan(&[volume()], &SnapshotName::new("dbsnap-x").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 snapshots for 1 volumes"), "{err}");
    let err = exec("foreign-list")
        .list(&[volume()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("backup-by-hand"), "{err}");
}

#[tokio::test]
async fn error_codes_map_to_backend_errors() {
    match exec("unsupported")
        .probe(&[PathBuf::from("/var/lib/mysql")])
        .await
    {
        Err(BackendError::Unsupported {
            backend,
            path,
            reason,
            hint,
        }) => {
            assert_eq!(backend, "exec:unsupported");
            assert_eq!(path, PathBuf::from("/var/lib/mysql"));
            assert_eq!(reason, "it is on tmpfs");
            assert_eq!(hint, "move it to a SAN volume");
        }
        other => panic!("{other:?}"),
    }
    let err = probe_error("fails").await;
    assert!(
        err.contains("reported an error (failed): snapshot API unavailable. retry later"),
        "{err}"
    );
    assert!(err.contains("the API said 503"), "{err}");
}
