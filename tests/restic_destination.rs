//! `dest = "restic:<repository>"` end to end: real restic (Debian's 0.14) against a
//! local repository, a REST server (`rclone serve restic`) and sftp through a real
//! sshd, with a real MariaDB under write load. A backup restored from each passes the
//! bank consistency check.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::restic::{use_repository, Repo, RestServer, Wrappers};
use common::{dbsnap_on_path, stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Commit, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};
use dbsnap_test_support::sshd::Sshd;

/// `dbsnap backup --json` while writers run; the manifest and what was committed.
fn backup_under_load(sb: &Sandbox) -> (serde_json::Value, Vec<Commit>) {
    let writers = Writers::start(&sb.server.socket, 8);
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.dbsnap(&["backup", "--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let commits = writers.stop();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    (stdout_json(&out), commits)
}

fn entries_of(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Restore backup `name` from the repository into a new datadir and start a server on
/// it: it holds exactly what was committed before the lock, at the recorded GTID.
/// restic wrote the files once, where they stay: no rsync, no staged copy.
fn assert_restores_consistently(sb: &Sandbox, manifest: &serde_json::Value, commits: &[Commit]) {
    let name = manifest["name"].as_str().unwrap();
    let restored = sb.dir.path().join(format!("restored {name}"));
    let wrappers = Wrappers::new(
        &sb.dir.path().join("counting"),
        &[("restic", ""), ("rsync", "")],
    );
    let before = entries_of(sb.dir.path());
    let out = dbsnap_on_path(
        sb,
        &wrappers.path(),
        &["restore", name, "--datadir", restored.to_str().unwrap()],
    );
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert_eq!(
        wrappers.calls("rsync"),
        Vec::<String>::new(),
        "a second copy"
    );
    let restores: Vec<String> = wrappers
        .calls("restic")
        .into_iter()
        .filter(|c| c.contains("restore"))
        .collect();
    assert!(
        !restores.is_empty() && restores.iter().all(|c| c.contains("--include=")),
        "{restores:?}"
    );
    // Beside the target only the directories restored beside it (DIR.<role>).
    let target = restored.file_name().unwrap().to_string_lossy().into_owned();
    let added: Vec<String> = entries_of(sb.dir.path())
        .difference(&before)
        .cloned()
        .collect();
    assert!(added.contains(&target), "{added:?}");
    assert!(
        added.iter().all(|a| a.starts_with(&target)),
        "left beside the target: {added:?}"
    );
    assert!(
        !entries_of(&restored)
            .iter()
            .any(|e| e.starts_with(".dbsnap")),
        "staging left in the target: {:?}",
        entries_of(&restored)
    );
    assert!(!sb.state.join("staging").exists(), "staged in state_dir");
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join(format!("run {name}")))
    });
    let verdict = bank::assert_consistent(
        &copy,
        commits,
        time(&manifest["lock"]["acquired_at"]),
        time(&manifest["lock"]["released_at"]),
    );
    eprintln!("{verdict:?}");
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        manifest["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
    );
}

fn tags(snapshot: &serde_json::Value) -> Vec<String> {
    snapshot["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn backups_into_a_local_repository_restore_consistently_and_are_listed_verified_and_pruned() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let repo_dir = sb.dir.path().join("restic repo");
    let repo = Repo::new(sb.dir.path(), repo_dir.to_str().unwrap());
    use_repository(&sb, &repo, "", "tags = [\"nightly\"]");

    // Initialisation is the user's (see restic_faults.rs for a missing repository).
    repo.init();
    let out = sb.dbsnap(&["check"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("restic backup"));

    let (first, commits) = backup_under_load(&sb);
    assert_eq!(first["transfer"]["method"], "restic");
    assert!(first["transfer"]["bytes_written"].as_u64().unwrap() > 0);
    let name = first["name"].as_str().unwrap();
    let datadir = first["server"]["datadir"].as_str().unwrap();

    // The files' snapshot holds the datadir at its original path, tagged for dbsnap;
    // the manifest is a snapshot of its own that names it.
    let data = repo.snapshots_of(name, "dbsnap-data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["paths"], serde_json::json!([datadir]));
    let data_tags = tags(&data[0]);
    for tag in ["dbsnap", "nightly", &format!("dbsnap-datadir={datadir}")] {
        assert!(data_tags.iter().any(|t| t == tag), "{tag} in {data_tags:?}");
    }
    assert_eq!(
        data[0]["short_id"],
        first["transfer"]["repository_snapshot"]
    );
    assert_eq!(repo.snapshots_of(name, "dbsnap-manifest").len(), 1);
    let id = data[0]["id"].as_str().unwrap();
    let listing =
        String::from_utf8_lossy(&repo.restic(&["ls", "--no-lock", id]).stdout).into_owned();
    assert!(listing.contains(&format!("{datadir}/ibdata1")), "{listing}");
    assert!(
        !listing.contains(".pid"),
        "the pid file was saved: {listing}"
    );

    // The second backup is deduplicated against the first.
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success());
    let second = stdout_json(&out);
    let second_name = second["name"].as_str().unwrap();
    assert_eq!(second["transfer"]["base"], name);
    assert_eq!(
        second["transfer"]["parent_snapshot"],
        first["transfer"]["repository_snapshot"]
    );
    assert!(
        second["transfer"]["bytes_written"].as_u64() < first["transfer"]["bytes_written"].as_u64(),
        "{second}"
    );

    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{list}");
    assert_eq!(entries[0]["name"], name);
    assert_eq!(entries[0]["status"], "complete");
    assert_eq!(
        entries[0]["manifest"]["lock"]["hold_ms"],
        first["lock"]["hold_ms"]
    );
    let human = String::from_utf8_lossy(&sb.dbsnap(&["list"]).stdout).into_owned();
    assert!(human.contains(name) && human.contains("restic"), "{human}");

    assert_restores_consistently(&sb, &first, &commits);

    // verify: restic check, then the throwaway server on a restored copy; the verdict
    // is stored in the repository and shown by list.
    let out = sb.dbsnap(&["verify", second_name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    assert_eq!(list[1]["status"], "verified", "{list}");
    assert_eq!(repo.snapshots_of(second_name, "dbsnap-manifest").len(), 1);

    // prune keeps the newest; the other is forgotten and its data pruned.
    let config = std::fs::read_to_string(&sb.config).unwrap() + "\n[retention]\nkeep_last = 1\n";
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], second_name);
    assert!(repo.snapshots_of(name, "dbsnap-data").is_empty());
    assert!(repo.snapshots_of(name, "dbsnap-manifest").is_empty());

    repo.assert_checks_clean();
    assert!(repo.locks().is_empty());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// Each manifest is read from the repository once (`restic dump`), then from the
/// cache in state_dir, kept by snapshot id (which never stands for other contents).
#[test]
fn a_second_list_reads_no_manifest_from_the_repository_again() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let repo = Repo::new(sb.dir.path(), sb.dir.path().join("repo").to_str().unwrap());
    repo.init();
    use_repository(&sb, &repo, "", "");
    for _ in 0..2 {
        assert!(sb.dbsnap(&["backup"]).status.success());
    }
    // As another host (or a fresh state_dir) would start: nothing cached.
    std::fs::remove_dir_all(sb.state.join("restic-manifests")).unwrap();
    let wrappers = Wrappers::new(sb.dir.path(), &[("restic", "")]);
    let dumps = || {
        wrappers
            .calls("restic")
            .into_iter()
            .filter(|c| c.split_whitespace().any(|word| word == "dump"))
            .count()
    };
    let list = |what: &str| {
        let out = dbsnap_on_path(&sb, &wrappers.path(), &["list", "--json"]);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        stdout_json(&out)
    };
    let first = list("first list");
    assert_eq!(dumps(), 2, "{:?}", wrappers.calls("restic"));
    let statuses: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["complete", "complete"], "{first}");
    wrappers.clear();
    let second = list("second list");
    assert_eq!(dumps(), 0, "{:?}", wrappers.calls("restic"));
    assert_eq!(second, first);
    // A manifest forgotten with its backup leaves the cache too.
    let config = std::fs::read_to_string(&sb.config).unwrap() + "\n[retention]\nkeep_last = 1\n";
    sb.write_raw_config(&config);
    assert!(sb.dbsnap(&["prune"]).status.success());
    let cached = std::fs::read_dir(sb.state.join("restic-manifests"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);
    assert_eq!(list("after prune").as_array().unwrap().len(), 1);
}

/// Two servers on one host, each with its own state_dir, back up into one repository
/// at once: each backup claims a name of its own and stays apart from the other. (The
/// claim between two runs that start in the same second is
/// `destination::restic::tests::of_two_runs_claiming_one_name_*`.)
#[test]
fn two_servers_backing_up_into_one_repository_at_once_keep_their_backups_apart() {
    let (one, two) = (Sandbox::new(), Sandbox::new());
    let repo = Repo::new(
        one.dir.path(),
        one.dir.path().join("repo").to_str().unwrap(),
    );
    repo.init();
    for sb in [&one, &two] {
        bank::create(&sb.server);
        use_repository(sb, &repo, "", "");
    }
    // Both in the same second: both claim the same name, and the loser's `forget` of
    // its claim (an exclusive lock) meets the winner's `restic backup` (a shared one);
    // whichever comes second waits for the other (restic 0.14 has no `--retry-lock`:
    // dbsnap retries) instead of failing.
    let started = [&one, &two].map(|sb| {
        std::process::Command::new(common::DBSNAP)
            .arg("--config")
            .arg(&sb.config)
            .args(["backup", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    let manifests = started.map(|child| {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout_json(&out)
    });
    let names = manifests.each_ref().map(|m| m["name"].as_str().unwrap());
    eprintln!("names {names:?}");
    assert_ne!(names[0], names[1]);
    for sb in [&one, &two] {
        assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    }
    // Each backup is its own: listed complete, of its own datadir, by either server.
    for sb in [&one, &two] {
        let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
        let entries = list.as_array().unwrap();
        assert_eq!(entries.len(), 2, "{list}");
        for (entry, manifest) in entries.iter().zip(sorted(&manifests)) {
            assert_eq!(entry["status"], "complete", "{list}");
            assert_eq!(
                entry["manifest"]["server"]["datadir"],
                manifest["server"]["datadir"]
            );
        }
    }
    repo.assert_checks_clean();
    assert!(repo.locks().is_empty());
}

/// Manifests in the order `list` shows them: by name.
fn sorted(manifests: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut sorted: Vec<&serde_json::Value> = manifests.iter().collect();
    sorted.sort_by_key(|m| m["name"].as_str().unwrap().to_string());
    sorted
}

#[test]
fn a_backup_through_a_rest_server_restores_consistently_and_a_server_that_is_down_is_named() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let mut server = RestServer::start(&sb.dir.path().join("rest server"));
    let repo = Repo::new(sb.dir.path(), &server.repository());
    use_repository(&sb, &repo, "", "");
    let out = sb.dbsnap(&["init-repo", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created = stdout_json(&out);
    assert_eq!(created["repository"], format!("restic:{}", repo.repository));
    let id = created["id"].as_str().unwrap().to_string();
    assert!(repo.restic(&["cat", "config"]).status.success());
    // Once only: a second init-repo changes nothing.
    let out = sb.dbsnap(&["init-repo"]);
    assert_eq!(out.status.code(), Some(15));
    assert!(
        stderr(&out).contains("already a restic repository"),
        "{}",
        stderr(&out)
    );
    let config = String::from_utf8_lossy(&repo.restic(&["cat", "config"]).stdout).into_owned();
    assert!(config.contains(&id), "{config}");

    let (manifest, commits) = backup_under_load(&sb);
    assert_eq!(manifest["transfer"]["method"], "restic");
    // Room cannot be known over REST: said, not assumed.
    assert_restores_consistently(&sb, &manifest, &commits);

    server.stop();
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(15));
    assert!(
        stderr(&out).contains("cannot be reached"),
        "{}",
        stderr(&out)
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    server.restart();
    assert_eq!(
        repo.snapshots_of(manifest["name"].as_str().unwrap(), "dbsnap-data")
            .len(),
        1
    );
    repo.assert_checks_clean();
}

#[test]
fn a_backup_over_sftp_through_a_real_sshd_restores_consistently() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let sshd = Sshd::start();
    // How restic's ssh reaches the test's sshd (port, key, known host): an ssh config
    // named by restic's sftp.command option, as a real set-up would.
    let ssh_config = sb.dir.path().join("ssh config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host backup-host\n  HostName {host}\n  User {user}\n  Port {port}\n  \
             IdentityFile \"{key}\"\n  IdentitiesOnly yes\n  UserKnownHostsFile \"{known}\"\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n",
            host = sshd.host,
            user = sshd.user,
            port = sshd.port,
            key = sshd.identity.display(),
            known = sshd.known_hosts.display(),
        ),
    )
    .unwrap();
    let remote = sb.dir.path().join("sftp repo");
    let mut repo = Repo::new(
        sb.dir.path(),
        &format!("sftp:backup-host:{}", remote.display()),
    );
    let option = format!(
        "sftp.command=ssh -F '{}' backup-host -s sftp",
        ssh_config.display()
    );
    repo.options = vec![option.clone()];
    repo.init();
    use_repository(&sb, &repo, "", &format!("options = [{option:?}]"));

    let (manifest, commits) = backup_under_load(&sb);
    assert_eq!(manifest["transfer"]["method"], "restic");
    assert!(
        remote.join("config").exists(),
        "the repository is not where sftp put it"
    );
    assert_restores_consistently(&sb, &manifest, &commits);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    repo.assert_checks_clean();
}

/// A subvolume nested in the datadir is a volume of its own: frozen separately, shown
/// to restic at its original path below the datadir's, saved and restored with it.
#[test]
fn a_subvolume_nested_in_the_datadir_is_saved_and_restored_through_restic() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let datadir = sb.fs.mountpoint.join("mysql");
    dbsnap_test_support::sh(
        "btrfs",
        &[
            "subvolume",
            "create",
            datadir.join("nested_db").to_str().unwrap(),
        ],
    );
    sb.server.sql(
        "CREATE TABLE nested_db.t (i INT PRIMARY KEY) ENGINE=InnoDB;
         INSERT INTO nested_db.t SELECT seq FROM bank.seq_1_to_100",
    );
    let repo = Repo::new(sb.dir.path(), sb.dir.path().join("repo").to_str().unwrap());
    repo.init();
    use_repository(&sb, &repo, "", "");
    let (manifest, commits) = backup_under_load(&sb);
    assert_eq!(
        manifest["snapshot"]["volumes"].as_array().unwrap().len(),
        2,
        "{}",
        manifest["snapshot"]
    );
    assert_restores_consistently(&sb, &manifest, &commits);
    let name = manifest["name"].as_str().unwrap();
    let restored = MariaDb::start_existing(ServerOptions {
        server_id: 3,
        ..ServerOptions::new(
            &sb.dir.path().join(format!("restored {name}")),
            &sb.dir.path().join(format!("run again {name}")),
        )
    });
    assert_eq!(restored.sql("SELECT COUNT(*) FROM nested_db.t"), "100");
}
