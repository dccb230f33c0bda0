//! Every lock mode yields a consistent copy under write load (InnoDB transfers and
//! MyISAM audit rows), inconsistent modes are refused, and long-running statements are
//! handled by policy without ever stalling writers longer than the configured wait.

mod common;

use std::time::{Duration, Instant};

use common::{restore, stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Commit, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// The longest a writer may wait in the stall tests: one 1 s lock attempt plus a generous
/// margin for a loaded 2-core machine. It is far below the 30 s statement that would
/// stall writers if the bound did not hold, which is what the tests prove.
const STALL_BOUND: Duration = Duration::from_secs(3);

/// Back up with `args` while 8 writers (with MyISAM audit rows when `audit`) run;
/// restore; check consistency. Returns the manifest and the worst commit latency.
fn backup_and_verify(sb: &Sandbox, args: &[&str], audit: bool) -> (serde_json::Value, Duration) {
    let writers = if audit {
        Writers::start_with_audit(&sb.server.socket, 8)
    } else {
        Writers::start(&sb.server.socket, 8)
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec!["backup", "--json"];
    all.extend_from_slice(args);
    let out = sb.dbsnap(&all);
    std::thread::sleep(Duration::from_millis(300));
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    let name = manifest["name"].as_str().unwrap().to_string();
    let restored = sb.dir.path().join(format!("restored-{name}"));
    restore(sb, &backup, &restored, &[]);
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join(format!("run-{name}")))
    });
    let verdict = bank::assert_consistent(
        &copy,
        &commits,
        time(&manifest["lock"]["acquired_at"]),
        time(&manifest["lock"]["released_at"]),
    );
    let worst = worst_latency(&commits);
    eprintln!(
        "mode {}: prelude {} ms, wait {} ms, hold {} ms, worst commit latency {worst:?}, {verdict:?}",
        manifest["lock"]["mode"], manifest["lock"]["prelude_ms"], manifest["lock"]["wait_ms"], manifest["lock"]["hold_ms"]
    );
    (manifest, worst)
}

fn worst_latency(commits: &[Commit]) -> Duration {
    commits
        .iter()
        .map(|c| {
            c.audit_acked
                .unwrap_or(c.acked)
                .duration_since(c.began)
                .unwrap_or_default()
        })
        .max()
        .unwrap()
}

#[test]
fn every_mode_gives_a_consistent_copy_with_myisam_present() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    for (args, mode) in [
        (&["--lock", "ftwrl"][..], "ftwrl"),
        (&["--lock", "backup-stage"][..], "backup-stage"),
        (&[][..], "backup-stage"),
    ] {
        let (manifest, _) = backup_and_verify(&sb, args, true);
        assert_eq!(manifest["lock"]["mode"], mode);
        assert_eq!(manifest["coordinates"]["exact"], true);
    }
}

#[test]
fn none_is_refused_with_myisam_and_crash_consistent_without() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let out = sb.dbsnap(&["backup", "--lock", "none"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("bank.audit (MyISAM)") && err.contains("--force"),
        "{err}"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    sb.server.sql("DROP TABLE bank.audit");
    sb.server.sql("CREATE TABLE bank.audit (client INT NOT NULL, seq INT NOT NULL, PRIMARY KEY (client, seq)) ENGINE=InnoDB");
    let (manifest, _) = backup_and_verify(&sb, &["--lock", "none"], false);
    assert_eq!(manifest["lock"]["mode"], "none");
    assert_eq!(
        manifest["coordinates"]["exact"], false,
        "coordinates read without a lock are not exact"
    );
}

/// A 30-second write on a table the writers never touch: it blocks FTWRL, not them.
struct Blocker {
    child: std::process::Child,
}

impl Blocker {
    fn start(server: &MariaDb) -> Blocker {
        server.sql("CREATE TABLE IF NOT EXISTS bank.report (n INT) ENGINE=InnoDB; DELETE FROM bank.report; INSERT INTO bank.report VALUES (1)");
        let child = std::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", server.socket.display()))
            .args(["-uroot", "-e", "UPDATE bank.report SET n = n + SLEEP(30)"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        Blocker { child }
    }

    /// Whether the statement is still running.
    fn running(&self, server: &MariaDb) -> bool {
        !server
            .sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE bank.report%'")
            .is_empty()
    }

    fn stop(mut self, server: &MariaDb) {
        let id = server.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE bank.report%'",
        );
        if !id.is_empty() {
            server.sql(&format!("KILL QUERY {id}"));
        }
        self.child.wait().unwrap();
    }
}

fn blocked_backup(
    sb: &Sandbox,
    mysql: &str,
    args: &[&str],
) -> (std::process::Output, Duration, Duration, Blocker) {
    sb.write_config(&format!(
        "lock_wait_timeout = \"1s\"\nlock_attempts = 2\nlong_query_threshold = \"1s\"\n{mysql}"
    ));
    let blocker = Blocker::start(&sb.server);
    let writers = Writers::start(&sb.server.socket, 4);
    let started = Instant::now();
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let out = sb.dbsnap(&all);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let worst = worst_latency(&writers.stop());
    (out, elapsed, worst, blocker)
}

#[test]
fn long_query_policy_wait_gives_up_within_the_bound() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let (out, elapsed, worst, blocker) =
        blocked_backup(&sb, "long_queries = \"wait\"", &["--lock", "ftwrl"]);
    blocker.stop(&sb.server);
    assert_eq!(out.status.code(), Some(7), "exit code for a lock timeout");
    let err = stderr(&out);
    assert!(
        err.contains("SLEEP(30)"),
        "the error names the blocking query: {err}"
    );
    assert!(err.contains("2 attempt(s)"), "{err}");
    // Two attempts of 1 s, a pause between them, connection set-up: far below the 30 s query.
    assert!(
        elapsed < Duration::from_secs(8),
        "gave up after {elapsed:?}"
    );
    assert!(
        worst < STALL_BOUND,
        "a writer stalled {worst:?}, more than one lock attempt"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn long_query_policy_kill_kills_it_and_proceeds() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let (out, _, worst, blocker) =
        blocked_backup(&sb, "long_queries = \"kill\"", &["--lock", "ftwrl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("killed a long-running statement"));
    assert!(!blocker.running(&sb.server), "the blocker still runs");
    blocker.stop(&sb.server);
    assert!(worst < STALL_BOUND, "a writer stalled {worst:?}");
    assert_eq!(sb.backups().len(), 1);
}

#[test]
fn long_query_policy_abort_aborts_before_locking() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let (out, elapsed, worst, blocker) =
        blocked_backup(&sb, "long_queries = \"abort\"", &["--lock", "ftwrl"]);
    assert!(blocker.running(&sb.server), "abort must not kill anything");
    blocker.stop(&sb.server);
    assert_eq!(out.status.code(), Some(7));
    assert!(
        stderr(&out).contains("not locking") && stderr(&out).contains("SLEEP(30)"),
        "{}",
        stderr(&out)
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(
        worst < STALL_BOUND,
        "writers stalled {worst:?} although nothing was locked"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn backup_stage_is_not_blocked_by_a_long_write() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let (out, _, worst, blocker) = blocked_backup(&sb, "", &["--lock", "backup-stage"]);
    assert!(blocker.running(&sb.server), "nothing was killed");
    blocker.stop(&sb.server);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(worst < STALL_BOUND, "a writer stalled {worst:?}");
}

#[test]
fn max_lock_ms_fails_the_run_but_keeps_the_backup() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let out = sb.dbsnap(&["backup", "--max-lock-ms", "0.001"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(
        stderr(&out).contains("over the --max-lock-ms budget"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sb.backups().len(), 1);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// An exec plugin that behaves like the shell btrfs reference plugin, except that its
/// `snapshot` hangs for a minute (after touching `dir/snapshot-started`): a storage
/// system that stalls while writers wait.
fn hanging_plugin(dir: &std::path::Path) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/examples/dbsnap-backend-btrfs-sh");
    let script = plugins.join("dbsnap-backend-hangs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = snapshot ]; then touch '{}'; sleep 60; fi\nexec '{}' \"$@\"\n",
            dir.join("snapshot-started").display(),
            reference.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    plugins
}

#[test]
fn a_snapshot_that_hangs_is_unlocked_within_max_lock_hold_and_cleaned_up() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let plugins = hanging_plugin(sb.dir.path());
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        "[snapshot]\nbackend = \"btrfs\"",
        &format!("[snapshot]\nbackend = \"exec:hangs\"\n[snapshot.exec]\nplugin_dir = {plugins:?}"),
    );
    // A short lock_wait_timeout: a transfer holding a row lock and queued behind
    // FLUSH TABLES WITH READ LOCK, with another transfer waiting for that row, keeps the
    // FTWRL (and the writers behind it) waiting until the timeout cancels the attempt —
    // 5 s by default, over the stall bound. This test is about max_lock_hold.
    sb.write_raw_config(&config.replace(
        "[mysql]\n",
        "[mysql]\nmax_lock_hold = \"1s\"\nlock_wait_timeout = \"1s\"\n",
    ));
    let writers = Writers::start(&sb.server.socket, 4);
    let started = Instant::now();
    let out = sb.dbsnap(&["backup", "--lock", "ftwrl"]);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let worst = worst_latency(&writers.stop());
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_lock_hold"), "{}", stderr(&out));
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert!(
        worst < STALL_BOUND,
        "writers stalled {worst:?} with a 1 s max_lock_hold"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn sigterm_while_the_lock_is_held_unlocks_first_and_cleans_up() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let plugins = hanging_plugin(sb.dir.path());
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        "[snapshot]\nbackend = \"btrfs\"",
        &format!("[snapshot]\nbackend = \"exec:hangs\"\n[snapshot.exec]\nplugin_dir = {plugins:?}"),
    );
    sb.write_raw_config(&config.replace("[mysql]\n", "[mysql]\nmax_lock_hold = \"60s\"\n"));
    let mut child = std::process::Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .args(["backup", "--lock", "ftwrl"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = sb.dir.path().join("snapshot-started");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let locked = marker.exists();
    // While the lock is held, a write waits.
    let blocked = sb
        .server
        .try_sql("SET SESSION lock_wait_timeout = 1; INSERT INTO bank.accounts VALUES (1000, 0)");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let signalled = Instant::now();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(locked, "the plugin's snapshot never started: {err}");
    assert!(
        blocked.is_err(),
        "a write went through while the lock was held"
    );
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        signalled.elapsed()
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    sb.server.sql("INSERT INTO bank.accounts VALUES (1001, 0)");
}
