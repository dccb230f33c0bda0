//! The hostile-input corpus: configurations, command lines, database users, destinations,
//! tampered backups and journals, and option files that a careless or hostile user can
//! give dbsnap. Each case asserts the exit code, that the message names the key or path
//! at fault, and that nothing changed: no snapshot, no partial directory, no journal
//! entry, the destination listing unchanged, writes not blocked, and no canary file
//! (every shell metacharacter in the corpus would create one if a shell ever ran).
//!
//! The cases are a table, run against one MariaDB on one btrfs sandbox shared by all:
//! they fail in preflight, so they are fast. Cases that need a server of their own (a
//! datadir that is not on btrfs) or that must succeed (hostile paths) are tests of
//! their own below.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{dbsnap_with, stderr, Sandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// One hostile input and what dbsnap must do with it.
struct Case {
    subject: &'static str,
    name: String,
    /// The whole configuration file (written raw: it may be malformed).
    config: String,
    args: Vec<String>,
    code: i32,
    /// Each must appear in stderr: the key, path or value at fault, and what to do.
    says: Vec<String>,
    /// The destination whose listing must not change (default: the sandbox's).
    dest: Option<PathBuf>,
    /// Run with `--config` naming this instead of the case's written configuration.
    config_path: Option<PathBuf>,
}

/// The sandbox and the files the cases refer to.
struct Corpus {
    sb: Sandbox,
    /// Created only if a shell ever ran one of the corpus's metacharacter strings.
    canary: PathBuf,
    cases: Vec<Case>,
    counter: usize,
}

const MARIADB_USERS: &str = "
    CREATE USER 'backup'@'localhost' IDENTIFIED BY 'Right-S3cret';
    GRANT RELOAD, BINLOG MONITOR, PROCESS ON *.* TO 'backup'@'localhost';
    CREATE USER 'noprocess'@'localhost' IDENTIFIED BY 'Right-S3cret';
    GRANT RELOAD, BINLOG MONITOR ON *.* TO 'noprocess'@'localhost';
    CREATE USER 'seeing'@'localhost' IDENTIFIED BY 'Right-S3cret';
    GRANT RELOAD, BINLOG MONITOR, PROCESS, SHOW VIEW ON *.* TO 'seeing'@'localhost';
    CREATE USER 'weak'@'localhost' IDENTIFIED BY 'Weak-S3cret';
    GRANT SELECT, PROCESS ON *.* TO 'weak'@'localhost';";

impl Corpus {
    fn new() -> Corpus {
        let sb = Sandbox::new();
        bank::create(&sb.server);
        sb.server.sql(MARIADB_USERS);
        let canary = sb.dir.path().join("CANARY");
        Corpus {
            sb,
            canary,
            cases: Vec::new(),
            counter: 0,
        }
    }

    fn dir(&self) -> &Path {
        self.sb.dir.path()
    }

    /// A shell command that would create the canary.
    fn touch(&self) -> String {
        format!("$(touch {})", self.canary.display())
    }

    /// A fresh state directory per case, so that journal cases cannot leak.
    fn state(&mut self) -> PathBuf {
        self.counter += 1;
        self.dir().join(format!("state {}", self.counter))
    }

    /// A configuration with the sandbox's state, socket (root) and destination, and
    /// `mysql`, `snapshot` and `tail` spliced in.
    fn config_with(&mut self, mysql: &str, snapshot: &str, tail: &str) -> String {
        let state = self.state();
        format!(
            "state_dir = {state:?}\n[mysql]\n{mysql}\n[snapshot]\nbackend = \"btrfs\"\n{snapshot}\n\
             [backup]\ndest = {:?}\n{tail}",
            self.sb.dest
        )
    }

    fn root(&self) -> String {
        format!("socket = {:?}\nuser = \"root\"", self.sb.server.socket)
    }

    fn config(&mut self) -> String {
        let root = self.root();
        self.config_with(&root, "", "")
    }

    /// The configuration with one `[mysql]` line added.
    fn mysql(&mut self, line: &str) -> String {
        let mysql = format!("{}\n{line}", self.root());
        self.config_with(&mysql, "", "")
    }

    /// The configuration with one `[snapshot]` line added.
    fn snapshot(&mut self, line: &str) -> String {
        let root = self.root();
        self.config_with(&root, line, "")
    }

    /// The configuration with `[backup] dest` replaced.
    fn dest(&mut self, dest: &str) -> String {
        let state = self.state();
        format!(
            "state_dir = {state:?}\n[mysql]\n{}\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest}\n",
            self.root()
        )
    }

    /// A config whose `[mysql]` connects as `user` through an option file with `text`.
    fn option_file(&mut self, name: &str, text: &str) -> (PathBuf, String) {
        let file = write_secret(self.dir(), name, text);
        let mysql = format!(
            "socket = {:?}\ndefaults_file = {file:?}",
            self.sb.server.socket
        );
        let config = self.config_with(&mysql, "", "");
        (file, config)
    }

    fn add(
        &mut self,
        subject: &'static str,
        name: impl Into<String>,
        config: String,
        args: &[&str],
        code: i32,
        says: &[&str],
    ) {
        self.cases.push(Case {
            subject,
            name: name.into(),
            config,
            args: args.iter().map(|a| a.to_string()).collect(),
            code,
            says: says.iter().map(|s| s.to_string()).collect(),
            dest: None,
            config_path: None,
        });
    }

    /// Run every case; return the failures (all of them, not just the first).
    fn run(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (i, case) in self.cases.iter().enumerate() {
            if let Err(why) = self.run_case(i, case) {
                failures.push(format!("[{}] {}: {why}", case.subject, case.name));
            }
        }
        failures
    }

    fn run_case(&self, i: usize, case: &Case) -> Result<(), String> {
        let written = self.dir().join(format!("case {i}.toml"));
        std::fs::write(&written, &case.config).unwrap();
        let config = case.config_path.clone().unwrap_or(written);
        let dest = case.dest.clone().unwrap_or_else(|| self.sb.dest.clone());
        let listing_before = listing(&dest);
        let state = state_dir_of(&case.config);
        let journal_before = state
            .as_ref()
            .and_then(|s| std::fs::read_to_string(s.join("journal.json")).ok());
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let out = dbsnap_with(&config, &args);
        let err = stderr(&out);
        let mut problems = Vec::new();
        if out.status.code() != Some(case.code) {
            problems.push(format!(
                "exit {:?}, expected {}",
                out.status.code(),
                case.code
            ));
        }
        for s in &case.says {
            if !err.contains(s.as_str()) {
                problems.push(format!("stderr lacks {s:?}"));
            }
        }
        if case.code != 0 && !out.stdout.is_empty() {
            problems.push("stdout is not empty on failure".into());
        }
        if listing(&dest) != listing_before {
            problems.push(format!("the listing of {} changed", dest.display()));
        }
        if let Some(state) = &state {
            let journal = std::fs::read_to_string(state.join("journal.json")).ok();
            let unchanged = journal == journal_before
                || (journal_before.is_none() && journal.as_deref().map(str::trim) == Some("[]"));
            if !unchanged {
                problems.push(format!("the journal changed: {journal:?}"));
            }
        }
        problems.extend(self.sb.leftovers().into_iter().filter(|l| {
            // Journals are per case (checked above); the sandbox's own is never used.
            !l.starts_with("journal entries")
        }));
        if self.canary.exists() {
            std::fs::remove_file(&self.canary).unwrap();
            problems.push("a shell ran: the canary file exists".into());
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(format!("{}\n    stderr: {err}", problems.join("; "))),
        }
    }
}

fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Names in a directory, sorted (missing directory: empty).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `state_dir = "..."` of a config, if it has a readable one.
fn state_dir_of(config: &str) -> Option<PathBuf> {
    let value: toml::Value = toml::from_str(config).ok()?;
    value.get("state_dir")?.as_str().map(PathBuf::from)
}

fn mount(args: &[&str]) {
    assert!(std::process::Command::new("mount")
        .args(args)
        .status()
        .unwrap()
        .success());
}

// ── config ──────────────────────────────────────────────────────────────────

fn config_cases(c: &mut Corpus) {
    const S: &str = "config";
    let backup = &["backup"];
    let check = &["check"];
    let root = c.root();
    let cfg = c.mysql("lock_wait_timout = \"1s\"");
    c.add(
        S,
        "unknown key",
        cfg,
        backup,
        2,
        &["lock_wait_timout", "line 5"],
    );
    let cfg = c
        .config()
        .replace("backend = \"btrfs\"", "backend = \"nfs\"");
    c.add(
        S,
        "unknown backend",
        cfg,
        backup,
        2,
        &["unknown snapshot backend \"nfs\"", "btrfs"],
    );
    let cfg = format!("{}\n[mysql\n", c.config());
    c.add(S, "malformed TOML", cfg, backup, 2, &[".toml"]);
    c.add(S, "empty file", String::new(), backup, 2, &["mysql"]);
    c.add(
        S,
        "binary garbage",
        "\u{0}\u{1}\u{fffd}\u{7f}".into(),
        backup,
        2,
        &[".toml"],
    );
    let cfg = format!("{}\n[mysql]\nuser = \"x\"\n", c.config());
    c.add(S, "a table twice", cfg, backup, 2, &["mysql"]);
    let cfg = c.mysql("user = \"a\"\nuser = \"b\"");
    c.add(S, "a key twice", cfg, backup, 2, &["user"]);
    let cfg = c.config().replace("[backup]", "[bakup]");
    c.add(S, "misspelt table", cfg, backup, 2, &["bakup"]);
    let cfg = c.mysql("lock_wait_timeout = 5");
    c.add(
        S,
        "a duration without a unit",
        cfg,
        backup,
        2,
        &["lock_wait_timeout"],
    );
    let cfg = c.mysql("lock_wait_timeout = \"soon\"");
    c.add(
        S,
        "a duration that is no duration",
        cfg,
        backup,
        2,
        &["lock_wait_timeout"],
    );
    let cfg = c.mysql("lock_wait_timeout = \"50ms\"");
    c.add(
        S,
        "lock_wait_timeout too short",
        cfg,
        backup,
        2,
        &["mysql.lock_wait_timeout", "line 5"],
    );
    let cfg = c.mysql("lock_wait_timeout = \"18446744073709551615s\"");
    c.add(
        S,
        "lock_wait_timeout that wraps",
        cfg,
        check,
        2,
        &["mysql.lock_wait_timeout", "line 5", "365d"],
    );
    let cfg = c.mysql("lock_wait_timeout = \"999999999999999999999s\"");
    c.add(
        S,
        "lock_wait_timeout beyond u64",
        cfg,
        check,
        2,
        &["lock_wait_timeout"],
    );
    let cfg = c.mysql("max_lock_hold = \"0s\"");
    c.add(
        S,
        "max_lock_hold = 0s",
        cfg,
        backup,
        2,
        &["mysql.max_lock_hold", "line 5"],
    );
    let cfg = c.mysql("max_lock_hold = \"-1s\"");
    c.add(
        S,
        "negative max_lock_hold",
        cfg,
        backup,
        2,
        &["max_lock_hold"],
    );
    let cfg = c.mysql("max_lock_hold = \"400d\"");
    c.add(
        S,
        "max_lock_hold over a year",
        cfg,
        backup,
        2,
        &["mysql.max_lock_hold"],
    );
    let cfg = c.mysql("long_query_threshold = \"18446744073709551615s\"");
    c.add(
        S,
        "long_query_threshold that wraps",
        cfg,
        backup,
        2,
        &["mysql.long_query_threshold"],
    );
    let cfg = c.mysql("lock_attempts = 0");
    c.add(
        S,
        "no lock attempts",
        cfg,
        backup,
        2,
        &["mysql.lock_attempts", "line 5"],
    );
    let cfg = c.mysql("lock_attempts = -1");
    c.add(
        S,
        "negative lock attempts",
        cfg,
        backup,
        2,
        &["lock_attempts"],
    );
    let cfg = c.mysql("lock_attempts = 99999999999");
    c.add(
        S,
        "lock attempts beyond u32",
        cfg,
        backup,
        2,
        &["lock_attempts"],
    );
    let cfg = c.mysql("lock = \"flush\"");
    c.add(S, "unknown lock mode", cfg, backup, 2, &["lock", "flush"]);
    let cfg = c.mysql("long_queries = \"murder\"");
    c.add(
        S,
        "unknown long-query policy",
        cfg,
        backup,
        2,
        &["long_queries", "murder"],
    );
    let cfg = c.mysql("host = \"127.0.0.1\"");
    c.add(
        S,
        "socket and host",
        cfg,
        check,
        2,
        &["socket and host", "line 5"],
    );
    let cfg = c.mysql("port = 70000");
    c.add(S, "port beyond u16", cfg, backup, 2, &["port"]);
    for (name, value) in [
        ("nan", "nan"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("negative", "-1"),
        ("100", "100"),
        ("a string", "\"15\""),
    ] {
        let cfg = c.snapshot(&format!("warn_free_percent = {value}"));
        c.add(
            S,
            format!("warn_free_percent {name}"),
            cfg,
            check,
            2,
            &["warn_free_percent"],
        );
    }
    for value in ["nan", "-0.5", "1e999"] {
        let cfg = c.snapshot(&format!("min_free_percent = {value}"));
        c.add(
            S,
            format!("min_free_percent {value}"),
            cfg,
            check,
            2,
            &["min_free_percent"],
        );
    }
    let cfg = c.snapshot("warn_free_percent = 2\nmin_free_percent = 10");
    c.add(
        S,
        "warn below min",
        cfg,
        check,
        2,
        &["snapshot.warn_free_percent", "min_free_percent"],
    );
    let cfg = c.config();
    let state = state_dir_of(&cfg).unwrap();
    let cfg = cfg.replacen(&format!("{state:?}"), "\"relative/state\"", 1);
    c.add(
        S,
        "relative state_dir",
        cfg,
        backup,
        2,
        &["state_dir", "absolute"],
    );
    let cfg = c.config_with("socket = \"mysqld.sock\"\nuser = \"root\"", "", "");
    c.add(
        S,
        "relative socket",
        cfg,
        backup,
        2,
        &["mysql.socket", "absolute"],
    );
    let cfg = c.config_with(&format!("{root}\ndefaults_file = \"my.cnf\""), "", "");
    c.add(
        S,
        "relative defaults_file",
        cfg,
        backup,
        2,
        &["mysql.defaults_file", "absolute"],
    );
    let cfg = c.config_with(
        &format!("{root}\npassword_file = \"/nonexistent/pw\""),
        "",
        "",
    );
    c.add(
        S,
        "missing password_file",
        cfg,
        backup,
        2,
        &["mysql.password_file", "/nonexistent/pw"],
    );
    let dir = c.dir().to_path_buf();
    let cfg = c.config_with(&format!("{root}\npassword_file = {dir:?}"), "", "");
    c.add(
        S,
        "password_file is a directory",
        cfg,
        backup,
        2,
        &["mysql.password_file"],
    );
    let cfg = c.snapshot("[snapshot.btrfs]\nsnapshot_dir = \"snaps\"");
    c.add(
        S,
        "relative snapshot_dir",
        cfg,
        backup,
        2,
        &["snapshot.btrfs.snapshot_dir", "absolute"],
    );
    let cfg = c.snapshot("[snapshot.btrfs]\nsnapshot_dir = \"/x\"\nsnapshot_dri = \"/y\"");
    c.add(S, "unknown backend key", cfg, backup, 2, &["snapshot_dri"]);
    let cfg = c
        .config()
        .replace("backend = \"btrfs\"", "backend = \"exec:../../bin/sh\"");
    c.add(
        S,
        "exec plugin name with a path",
        cfg,
        backup,
        2,
        &["../../bin/sh"],
    );
    let touch = c.touch();
    let cfg = c.config().replace(
        "backend = \"btrfs\"",
        &format!("backend = \"exec:{touch}\""),
    );
    c.add(
        S,
        "exec plugin name with a shell command",
        cfg,
        backup,
        2,
        &["is not allowed"],
    );
    let cfg = c.config_with(&root, "", "[hooks]\npre_lock = [\"touch\", \"x\"]");
    c.add(
        S,
        "hook program not absolute",
        cfg,
        backup,
        2,
        &["hooks.pre_lock", "absolute"],
    );
    let cfg = c.config_with(&root, "", "[hooks]\npre_lock = \"/bin/true\"");
    c.add(S, "hook not an argv list", cfg, backup, 2, &["pre_lock"]);
    let cfg = c.config_with(&root, "", "[hooks]\ntimeout = \"0s\"");
    c.add(S, "hook timeout 0s", cfg, backup, 2, &["hooks.timeout"]);
    let cfg = c.config_with(&root, "", "[hooks]\non_sucess = [\"/bin/true\"]");
    c.add(S, "unknown hook", cfg, backup, 2, &["on_sucess"]);
    let cfg = c.config_with(&root, "", "bwlimit = \"lots\"");
    c.add(S, "bwlimit that is no size", cfg, backup, 2, &["bwlimit"]);
    let cfg = c.config_with(&root, "", "method = \"ftp\"");
    c.add(
        S,
        "unknown transfer method",
        cfg,
        backup,
        2,
        &["method", "ftp"],
    );
    let cfg = c.config_with(&root, "", "pace = \"fast\"");
    c.add(S, "unknown pace", cfg, backup, 2, &["pace", "fast"]);
    let cfg = c.config_with(&root, "", "pace_target = 0.5");
    c.add(S, "pace target below 1", cfg, backup, 2, &["pace_target"]);
    let cfg = c.config_with(&root, "", "pace_floor = \"64MiB\"\nbwlimit = \"8MiB\"");
    c.add(
        S,
        "pace floor above bwlimit",
        cfg,
        backup,
        2,
        &["pace_floor", "bwlimit"],
    );
    let cfg = c.config_with(&root, "", "verify = \"yes\"");
    c.add(S, "verify not a boolean", cfg, backup, 2, &["verify"]);
    let cfg = c.config_with(&root, "", "[retention]\nkeep_last = -1");
    c.add(
        S,
        "negative retention",
        cfg,
        &["prune", "--dry-run"],
        2,
        &["keep_last"],
    );
    let cfg = c.config_with(
        &root,
        "",
        "[retention]\nkeep_last = 4294967295\nkeep_daily = 1",
    );
    c.add(
        S,
        "retention counts that would overflow a sum",
        cfg,
        &["prune", "--dry-run"],
        0,
        &[],
    );
    let cfg = c.config_with(&root, "", "[retention]\nkeep_last = 0");
    c.add(
        S,
        "retention that keeps nothing",
        cfg,
        &["prune"],
        2,
        &["retention"],
    );
}

fn missing_config_cases(c: &mut Corpus) {
    // The config path itself: `--config` names a missing file or a directory.
    const S: &str = "config";
    let missing = c.dir().join("no such config.toml");
    let dir = c.dir().to_path_buf();
    let (m, d) = (missing.display().to_string(), dir.display().to_string());
    for (name, path, says) in [
        (
            "config file missing",
            missing.clone(),
            vec![m.as_str(), "--config"],
        ),
        ("config file is a directory", dir.clone(), vec![d.as_str()]),
    ] {
        let cfg = c.config();
        c.add(S, name, cfg, &["check"], 2, &says);
        c.cases.last_mut().unwrap().config_path = Some(path);
    }
}

// ── destination ─────────────────────────────────────────────────────────────

fn destination_cases(c: &mut Corpus) {
    const S: &str = "destination";
    let backup = &["backup"];
    let cfg = c.dest("\"/\"");
    c.add(S, "dest = /", cfg, backup, 2, &["backup.dest", "line"]);
    let cfg = c.dest("\"/..\"");
    c.add(S, "dest = /..", cfg, backup, 2, &["backup.dest"]);
    let cfg = c.dest("\"/srv/../\"");
    c.add(
        S,
        "dest climbs with ..",
        cfg,
        backup,
        2,
        &["backup.dest", ".."],
    );
    let cfg = c.dest("\"backups\"");
    c.add(
        S,
        "relative dest",
        cfg,
        backup,
        2,
        &["backup.dest", "absolute"],
    );
    let cfg = c.dest("\"/srv/a\\nb\"");
    c.add(
        S,
        "dest with a newline",
        cfg,
        backup,
        2,
        &["backup.dest", "control characters"],
    );
    let cfg = c.dest("\"/srv/a\\u0000b\"");
    c.add(S, "dest with a NUL", cfg, backup, 2, &["backup.dest"]);
    let inside = c.sb.fs.mountpoint.join(".dbsnap-snapshots").join("backups");
    let cfg = c.dest(&format!("{inside:?}"));
    c.add(
        S,
        "dest inside .dbsnap-snapshots",
        cfg,
        backup,
        2,
        &["backup.dest", "snapshot directory"],
    );
    let snaps = c.sb.fs.mountpoint.join("snaps");
    let root = c.root();
    let state = c.state();
    let cfg = format!(
        "state_dir = {state:?}\n[mysql]\n{root}\n[snapshot]\nbackend = \"btrfs\"\n\
         [snapshot.btrfs]\nsnapshot_dir = {snaps:?}\n[backup]\ndest = {:?}\n",
        snaps.join("b")
    );
    c.add(
        S,
        "dest inside snapshot_dir",
        cfg,
        backup,
        2,
        &["backup.dest", "snapshot_dir"],
    );
    let missing = c.dir().join("no such dir");
    let cfg = c.dest(&format!("{missing:?}"));
    c.add(
        S,
        "dest missing",
        cfg,
        backup,
        6,
        &["no such dir", "mkdir -p"],
    );
    let touch = c.touch();
    let hostile = c.dir().join(format!("dest {touch}"));
    let cfg = c.dest(&format!("{hostile:?}"));
    c.add(
        S,
        "missing dest named with a shell command",
        cfg,
        backup,
        6,
        &["mkdir -p"],
    );
    let long = format!("/{}", "d".repeat(5000));
    let cfg = c.dest(&format!("{long:?}"));
    c.add(S, "dest name too long", cfg, backup, 6, &["cannot be used"]);
    let file = c.dir().join("a file");
    std::fs::write(&file, "x").unwrap();
    let cfg = c.dest(&format!("{file:?}"));
    c.add(S, "dest is a file", cfg, backup, 6, &["not a directory"]);
    let inside = c.sb.fs.mountpoint.join("mysql").join("backups");
    std::fs::create_dir(&inside).unwrap();
    let cfg = c.dest(&format!("{inside:?}"));
    c.add(
        S,
        "dest inside datadir",
        cfg,
        backup,
        6,
        &["inside the server's datadir"],
    );
    let link = c.dir().join("link to datadir");
    std::os::unix::fs::symlink(&inside, &link).unwrap();
    let cfg = c.dest(&format!("{link:?}"));
    c.add(
        S,
        "dest a symlink into the datadir",
        cfg,
        backup,
        6,
        &["inside the server's datadir"],
    );
    let same_fs = c.sb.fs.mountpoint.join("backups");
    std::fs::create_dir(&same_fs).unwrap();
    let cfg = c.dest(&format!("{same_fs:?}"));
    c.add(
        S,
        "dest on the snapshotted filesystem",
        cfg,
        backup,
        6,
        &["being snapshotted", "--force", "live filesystem"],
    );
    c.cases.last_mut().unwrap().dest = Some(same_fs);
    let cfg = c.snapshot(&format!(
        "[snapshot.btrfs]\nsnapshot_dir = {:?}",
        c.dir().join("snaps")
    ));
    c.add(
        S,
        "snapshot_dir on another filesystem",
        cfg,
        backup,
        5,
        &["not on the same btrfs filesystem", "snapshot_dir"],
    );
}

/// Destinations that need a mount for the duration of their case.
fn run_mounted_destination_cases(c: &mut Corpus) -> Vec<String> {
    const S: &str = "destination";
    let mut failures = Vec::new();
    // A read-only destination (root can write anywhere else).
    let ro = c.dir().join("read only");
    std::fs::create_dir(&ro).unwrap();
    mount(&["--bind", ro.to_str().unwrap(), ro.to_str().unwrap()]);
    mount(&["-o", "remount,ro,bind", ro.to_str().unwrap()]);
    let cfg = c.dest(&format!("{ro:?}"));
    failures.extend(c.run_one(
        S,
        "dest read-only",
        cfg,
        &["backup"],
        6,
        &["not writable"],
        &ro,
    ));
    mount(&["-o", "remount,rw,bind", ro.to_str().unwrap()]);
    let _ = std::process::Command::new("umount").arg(&ro).status();

    // A destination too small for the data.
    let small = c.dir().join("small");
    std::fs::create_dir(&small).unwrap();
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=4m",
        "dbsnap-test",
        small.to_str().unwrap(),
    ]);
    let cfg = c.dest(&format!("{small:?}"));
    failures.extend(c.run_one(
        S,
        "dest full",
        cfg,
        &["backup"],
        6,
        &["free", "choose another"],
        &small,
    ));
    let _ = std::process::Command::new("umount").arg(&small).status();
    failures
}

impl Corpus {
    /// Run one case now (for cases whose set-up must surround them).
    #[allow(clippy::too_many_arguments)]
    fn run_one(
        &mut self,
        subject: &'static str,
        name: &str,
        config: String,
        args: &[&str],
        code: i32,
        says: &[&str],
        dest: &Path,
    ) -> Option<String> {
        let case = Case {
            subject,
            name: name.into(),
            config,
            args: args.iter().map(|a| a.to_string()).collect(),
            code,
            says: says.iter().map(|s| s.to_string()).collect(),
            dest: Some(dest.to_path_buf()),
            config_path: None,
        };
        let i = 10_000 + self.counter;
        self.counter += 1;
        let result = self.run_case(i, &case).err();
        let failure = result.map(|why| format!("[{subject}] {name}: {why}"));
        self.cases.push(case);
        failure
    }
}

// ── database ────────────────────────────────────────────────────────────────

fn database_cases(c: &mut Corpus) {
    const S: &str = "database";
    let socket = format!("socket = {:?}", c.sb.server.socket);
    let dir = c.dir().to_path_buf();
    let wrong = write_secret(&dir, "wrong.pw", "not-the-password\n");
    let cfg = c.config_with(
        &format!("{socket}\nuser = \"backup\"\npassword_file = {wrong:?}"),
        "",
        "",
    );
    c.add(
        S,
        "wrong password",
        cfg,
        &["backup"],
        3,
        &["refused the credentials", "backup"],
    );
    let weak = write_secret(
        &dir,
        "weak.cnf",
        "[client]\nuser = weak\npassword = \"Weak-S3cret\"\n",
    );
    let cfg = c.config_with(&format!("{socket}\ndefaults_file = {weak:?}"), "", "");
    c.add(
        S,
        "missing privileges",
        cfg,
        &["backup"],
        4,
        &["RELOAD", "BINLOG MONITOR", "GRANT"],
    );
    let pw = write_secret(&dir, "right.pw", "Right-S3cret\n");
    let as_user = |user: &str| format!("{socket}\nuser = \"{user}\"\npassword_file = {pw:?}");
    let cfg = c.config_with(&as_user("noprocess"), "", "");
    c.add(
        S,
        "no PROCESS: tablespaces outside the datadir unknown",
        cfg,
        &["check"],
        4,
        &["PROCESS", "INNODB_SYS_TABLESPACES"],
    );
    // The README's grants without SHOW VIEW: information_schema.TABLES shows nothing,
    // so dbsnap cannot know the MyISAM table bank.audit exists.
    for args in [
        &["check", "--lock", "none"][..],
        &["backup", "--lock", "none"],
    ] {
        let cfg = c.config_with(&as_user("backup"), "", "");
        c.add(
            S,
            format!("blind to engines: {}", args.join(" ")),
            cfg,
            args,
            4,
            &["SHOW VIEW ON *.*", "every table's engine"],
        );
    }
    let cfg = c.config_with(&as_user("seeing"), "", "");
    c.add(
        S,
        "--lock none with a MyISAM table",
        cfg,
        &["check", "--lock", "none"],
        2,
        &["bank.audit (MyISAM)", "--force"],
    );
    let cfg = c.config_with(&as_user("seeing"), "", "");
    c.add(
        S,
        "--lock instance on MariaDB",
        cfg,
        &["check", "--lock", "instance"],
        2,
        &["LOCK INSTANCE FOR BACKUP needs MySQL"],
    );
    let cfg = c.config();
    c.add(
        S,
        "--lock replica on a primary",
        cfg,
        &["check", "--lock", "replica"],
        2,
        &["not a replica"],
    );
    let nowhere = dir.join("nowhere.sock");
    let cfg = c.config_with(&format!("socket = {nowhere:?}\nuser = \"root\""), "", "");
    c.add(
        S,
        "server down",
        cfg,
        &["backup"],
        3,
        &["cannot connect", "nowhere.sock", "Is the server running"],
    );
    let file = dir.join("not a socket");
    std::fs::write(&file, "").unwrap();
    let cfg = c.config_with(&format!("socket = {file:?}\nuser = \"root\""), "", "");
    c.add(
        S,
        "socket is a regular file",
        cfg,
        &["check"],
        3,
        &["not a socket"],
    );
    let cfg = c.config_with(&format!("{socket}\nuser = \"nobody-here\""), "", "");
    c.add(S, "unknown user", cfg, &["check"], 3, &["nobody-here"]);
    let cfg = c.config_with(
        &format!("{socket}\nuser = \"root'; DROP DATABASE bank; --\""),
        "",
        "",
    );
    c.add(
        S,
        "SQL in the user name",
        cfg,
        &["check"],
        3,
        &["refused the credentials"],
    );
    let touch = c.touch();
    let cfg = c.config_with(&format!("host = \"{touch}\"\nuser = \"root\""), "", "");
    c.add(
        S,
        "a shell command as host",
        cfg,
        &["check"],
        3,
        &["cannot connect"],
    );
    let cfg = c.config_with("host = \"127.0.0.1\"\nport = 1\nuser = \"root\"", "", "");
    c.add(
        S,
        "nothing listens on the port",
        cfg,
        &["check"],
        3,
        &["127.0.0.1:1"],
    );
}

// ── command line ────────────────────────────────────────────────────────────

fn cli_cases(c: &mut Corpus) {
    const S: &str = "cli";
    let target = c.dir().join("new datadir");
    let target = target.to_str().unwrap().to_string();
    let touch = c.touch();
    let long_label = "L".repeat(65);
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            vec!["verify", "20260101T000000Z"],
            2,
            vec!["is not a backup"],
        ),
        (vec!["verify", "/etc"], 2, vec!["is not a backup"]),
        (vec!["verify", "../../../etc"], 2, vec!["is not a backup"]),
        (vec!["verify", &touch], 2, vec!["is not a backup"]),
        (vec!["verify", ""], 2, vec!["is not a backup"]),
        (
            vec!["restore", "nope", "--datadir", &target],
            2,
            vec!["is not a backup"],
        ),
        (
            vec!["restore", &touch, "--datadir", &target],
            2,
            vec!["is not a backup"],
        ),
        (vec!["restore", "nope"], 2, vec!["--datadir"]),
        (
            vec!["snapshot", "rollback", "dbsnap-nope"],
            2,
            vec!["no kept snapshot"],
        ),
        (
            vec!["snapshot", "rollback", "../../etc"],
            2,
            vec!["../../etc"],
        ),
        (
            vec!["snapshot", "release", "dbsnap-x;rm -rf"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "release", &touch],
            2,
            vec!["cannot be released", "No such file"],
        ),
        (
            vec!["snapshot", "release", "/nonexistent/mnt"],
            2,
            vec!["/nonexistent/mnt cannot be released"],
        ),
        (
            vec!["snapshot", "create", "--label", "a b"],
            2,
            vec!["label \"a b\" is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", &touch],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", "`id`"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", "../up"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", "a/b"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", "new\nline"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", ""],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", ".hidden"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", "ünïcode"],
            2,
            vec!["is not allowed"],
        ),
        (
            vec!["snapshot", "create", "--label", &long_label],
            2,
            vec!["1 to 64 characters"],
        ),
        (
            vec!["snapshot", "create", "--mount", "relative/dir"],
            2,
            vec!["relative/dir"],
        ),
        (
            vec!["snapshot", "create", "--ttl", "forever"],
            2,
            vec!["--ttl"],
        ),
        (vec!["prune"], 2, vec!["[retention]"]),
        (vec!["backup", "--lock", "flush"], 2, vec!["flush"]),
        (
            vec!["backup", "--max-lock-ms", "abc"],
            2,
            vec!["--max-lock-ms"],
        ),
        (vec!["backup", "--max-lock-ms", "-1"], 2, vec!["'-1'"]),
        (
            vec!["backup", "--max-lock-ms=-1"],
            2,
            vec!["--max-lock-ms", "from 0 up"],
        ),
        (
            vec!["backup", "--max-lock-ms", "inf"],
            2,
            vec!["--max-lock-ms", "from 0 up"],
        ),
        (
            vec!["backup", "--max-lock-ms", "NaN"],
            2,
            vec!["--max-lock-ms"],
        ),
        (vec!["backup", "--bogus"], 2, vec!["--bogus"]),
        (vec!["bakcup"], 2, vec!["bakcup"]),
        (
            vec!["cleanup", "--forget", "nosuch"],
            2,
            vec!["no entries of run \"nosuch\""],
        ),
    ];
    for (args, code, says) in cases {
        let cfg = c.config();
        let name = format!("dbsnap {}", args.join(" "));
        c.add(S, name, cfg, &args, code, &says);
    }
}

// ── option files ────────────────────────────────────────────────────────────

fn option_file_cases(c: &mut Corpus) {
    const S: &str = "option files";
    let check = &["check"];
    // Read as the clients read them: these must connect (check exits 0).
    let (_, cfg) = c.option_file(
        "comment.cnf",
        "[client]\nuser = seeing\npassword = \"Right-S3cret\" # the backup user's\n",
    );
    c.add(S, "password with an end comment", cfg, check, 0, &[]);
    let (_, cfg) = c.option_file(
        "group.cnf",
        "[client]\nuser = nobody\npassword = wrong\n[dbsnap]\nuser = seeing\npassword = Right-S3cret\n",
    );
    c.add(S, "a [dbsnap] group after [client]", cfg, check, 0, &[]);
    let secret = write_secret(
        c.dir(),
        "included.cnf",
        "[client-server]\npassword = 'Right-S3cret'\n",
    );
    let (_, cfg) = c.option_file(
        "include.cnf",
        &format!("[client]\nuser = seeing\n!include {}\n", secret.display()),
    );
    c.add(S, "!include of a [client-server] group", cfg, check, 0, &[]);
    let conf_d = c.dir().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    write_secret(
        &conf_d,
        "50-user.cnf",
        "[client]\nuser = seeing\npassword = Right-S3cret\n",
    );
    let (_, cfg) = c.option_file(
        "includedir.cnf",
        &format!(
            "[client]\nuser = nobody\n!includedir {}\n",
            conf_d.display()
        ),
    );
    c.add(S, "!includedir", cfg, check, 0, &[]);
    let looping = c.dir().join("loop.cnf");
    let (_, cfg) = c.option_file(
        "loop.cnf",
        &format!(
            "[client]\nuser = seeing\npassword = Right-S3cret\n!include {}\n",
            looping.display()
        ),
    );
    c.add(S, "an !include loop", cfg, check, 0, &["nest deeper"]);
    // Refused, naming the file and the line.
    let (file, cfg) = c.option_file("nogroup.cnf", "user = root\n[client]\n");
    let file = file.display().to_string();
    c.add(
        S,
        "an option before any group",
        cfg,
        check,
        2,
        &[&file, "line 1", "mysql.defaults_file"],
    );
    let (file, cfg) = c.option_file("unclosed.cnf", "[client]\n[client\nuser = root\n");
    let file = file.display().to_string();
    c.add(
        S,
        "an unclosed group header",
        cfg,
        check,
        2,
        &[&file, "line 2"],
    );
    let (_, cfg) = c.option_file("port.cnf", "[client]\nport = http\n");
    c.add(
        S,
        "a port that is no number",
        cfg,
        check,
        2,
        &["port = \"http\""],
    );
    let (_, cfg) = c.option_file("emptyinclude.cnf", "[client]\n!include\n");
    c.add(
        S,
        "!include of nothing",
        cfg,
        check,
        2,
        &["!include", "line 2"],
    );
    let (_, cfg) = c.option_file("nodir.cnf", "[client]\n!includedir /nonexistent/conf.d\n");
    c.add(
        S,
        "!includedir of a missing directory",
        cfg,
        check,
        2,
        &["/nonexistent/conf.d"],
    );
    let dir = c.dir().to_path_buf();
    let socket = format!("socket = {:?}", c.sb.server.socket);
    let cfg = c.config_with(&format!("{socket}\ndefaults_file = {dir:?}"), "", "");
    c.add(
        S,
        "option file is a directory",
        cfg,
        check,
        2,
        &["mysql.defaults_file"],
    );
    let cfg = c.config_with(
        &format!("{socket}\ndefaults_file = \"/nonexistent.cnf\""),
        "",
        "",
    );
    c.add(
        S,
        "option file missing",
        cfg,
        check,
        2,
        &["/nonexistent.cnf"],
    );
    let binary = dir.join("binary.cnf");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, b'[', 0x80]).unwrap();
    let cfg = c.config_with(&format!("{socket}\ndefaults_file = {binary:?}"), "", "");
    c.add(S, "option file not text", cfg, check, 2, &["binary.cnf"]);
    let touch = c.touch();
    let (_, cfg) = c.option_file(
        "shell.cnf",
        &format!("[client]\nuser = seeing\npassword = \"{touch}\"\n"),
    );
    c.add(
        S,
        "a shell command as password",
        cfg,
        check,
        3,
        &["refused the credentials"],
    );
    let (_, cfg) = c.option_file(
        "socket.cnf",
        "[client]\nuser = root\nsocket = /nonexistent/mysqld.sock\n",
    );
    // The config's socket wins over the option file's.
    c.add(S, "the config's socket wins", cfg, check, 0, &[]);
}

// ── journal ─────────────────────────────────────────────────────────────────

/// A case whose state directory holds `journal` (raw text).
fn with_journal(c: &mut Corpus, journal: &str) -> String {
    let cfg = c.config();
    let state = state_dir_of(&cfg).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("journal.json"), journal).unwrap();
    cfg
}

fn journal_cases(c: &mut Corpus) {
    const S: &str = "journal";
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let touch = c.touch();
    let hostile_set = serde_json::json!([{"run": "r", "resource": {"kind": "snapshot", "set": {
        "backend": "btrfs", "name": format!("dbsnap-{touch}"), "snapshots": []}}}])
    .to_string();
    let unknown_backend = serde_json::json!([{"run": "r", "resource": {"kind": "snapshot", "set": {
        "backend": "nfs", "name": "dbsnap-x", "snapshots": []}}}])
    .to_string();
    for (name, journal) in [
        ("not JSON", "{{{ not json"),
        ("an object, not a list", "{}"),
        (
            "an unknown kind",
            r#"[{"run": "r", "resource": {"kind": "nuke", "dir": "/"}}]"#,
        ),
        (
            "a missing field",
            r#"[{"run": "r", "resource": {"kind": "partial"}}]"#,
        ),
        ("10000 levels deep", deep.as_str()),
        ("a NUL byte", "[\u{0}]"),
        ("a set name with a shell command", hostile_set.as_str()),
    ] {
        for command in ["backup", "cleanup"] {
            let cfg = with_journal(c, journal);
            c.add(
                S,
                format!("{command} with a journal of {name}"),
                cfg,
                &[command],
                // Exit 1 (as for an internal error): the journal is dbsnap's own state.
                1,
                &["journal.json", "is unreadable", "inspect it"],
            );
        }
    }
    let cfg = with_journal(c, &unknown_backend);
    c.add(
        S,
        "cleanup of an entry of another backend",
        cfg,
        &["cleanup"],
        1,
        &["nfs", "--forget RUN"],
    );
}

/// A journal entry cleanup refuses to release (here: a btrfs snapshot path that does
/// not carry its set's name) blocks every run until the user has checked it; `cleanup
/// --forget RUN` then drops it without touching the path.
fn run_foreign_entry_case(c: &mut Corpus) -> Vec<String> {
    let mut failures = Vec::new();
    let precious = c.dir().join("precious");
    std::fs::create_dir(&precious).unwrap();
    let journal = serde_json::json!([{"run": "tampered", "resource": {"kind": "snapshot", "set": {
        "backend": "btrfs", "name": "dbsnap-x", "snapshots": [{
            "volume": {"id": "/", "root": "/", "fstype": "btrfs"},
            "id": precious}]}}}]);
    let cfg = with_journal(c, &journal.to_string());
    let state = state_dir_of(&cfg).unwrap();
    let config = c.dir().join("foreign.toml");
    std::fs::write(&config, &cfg).unwrap();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            failures.push(format!("[journal] foreign entry: {what}"));
        }
    };
    for command in ["cleanup", "backup"] {
        let out = dbsnap_with(&config, &[command]);
        let err = stderr(&out);
        expect(!out.status.success(), &format!("{command} succeeded"));
        expect(
            err.contains("refusing to delete"),
            &format!("{command}: {err}"),
        );
        expect(
            err.contains("(run tampered)") && err.contains("--forget RUN"),
            &format!("{command}: {err}"),
        );
        expect(precious.exists(), "the precious directory was deleted");
    }
    let out = dbsnap_with(&config, &["cleanup", "--forget", "tampered", "--json"]);
    expect(out.status.success(), &stderr(&out));
    let forgotten = common::stdout_json(&out);
    expect(
        forgotten["forgotten"].as_array().map(Vec::len) == Some(1),
        "forgot one entry",
    );
    expect(precious.exists(), "forget deleted the path");
    let left = std::fs::read_to_string(state.join("journal.json")).unwrap();
    expect(left.trim() == "[]", &left);
    expect(
        dbsnap_with(&config, &["cleanup"]).status.success(),
        "cleanup after forget",
    );
    failures
}

// ── tampered backups ────────────────────────────────────────────────────────

/// Take one real backup into its own destination, then tamper with copies of it.
fn run_tampered_backup_cases(c: &mut Corpus) -> Vec<String> {
    const S: &str = "backups";
    let mut failures = Vec::new();
    let dest = c.dir().join("tampered backups");
    std::fs::create_dir(&dest).unwrap();
    let cfg = c.dest(&format!("{dest:?}"));
    let config = c.dir().join("tampered.toml");
    std::fs::write(&config, &cfg).unwrap();
    let out = dbsnap_with(&config, &["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good = PathBuf::from(common::stdout_json(&out)["path"].as_str().unwrap());
    let manifest = std::fs::read_to_string(good.join("manifest.toml")).unwrap();
    assert!(manifest.contains("exact = true"), "{manifest}");
    let target = c.dir().join("restored");

    // Copies of the good backup, each tampered one way, at the destination.
    let tamper = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
        let copy = dest.join(name);
        assert!(std::process::Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&good)
            .arg(&copy)
            .status()
            .unwrap()
            .success());
        edit(&copy);
        copy
    };
    let rewrite = |dir: &Path, from: &str, to: &str| {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = regex_replace_line(&text, from, to);
        assert_ne!(changed, text, "{from} not in the manifest");
        std::fs::write(&path, changed).unwrap();
    };
    let wrong_position = tamper("20260101T000001Z", &|d| {
        rewrite(d, "binlog_position = ", "binlog_position = 4")
    });
    let wrong_gtid = tamper("20260101T000002Z", &|d| {
        rewrite(d, "gtid_binlog_pos = ", "gtid_binlog_pos = \"0-1-999999\"")
    });
    let not_toml = tamper("20260101T000003Z", &|d| {
        std::fs::write(d.join("manifest.toml"), "[[[").unwrap()
    });
    let future = tamper("20260101T000004Z", &|d| {
        rewrite(d, "format = ", "format = 99")
    });
    let no_files = tamper("20260101T000005Z", &|d| {
        std::fs::remove_dir_all(d.join("files")).unwrap()
    });
    let escaping = tamper("20260101T000006Z", &|d| {
        let path = d.join("manifest.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text =
            format!("{text}\n[[stored]]\nroot = \"/\"\npath = \"../../../../etc\"\nid = \"x\"\n");
        std::fs::write(path, text).unwrap();
    });
    let partial = tamper("20260101T000007Z.partial", &|_| {});

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let t = s(&target);
    let cases: Vec<(String, Vec<String>, i32, Vec<String>)> = vec![
        (
            "exact binlog_position = 4".into(),
            vec!["verify".into(), s(&wrong_position)],
            11,
            vec!["position 4".into(), "disagree".into()],
        ),
        (
            "exact GTID that recovery does not reach".into(),
            vec!["verify".into(), s(&wrong_gtid)],
            11,
            vec!["0-1-999999".into()],
        ),
        (
            "manifest not TOML".into(),
            vec!["verify".into(), s(&not_toml)],
            2,
            vec!["manifest.toml".into(), "does not parse".into()],
        ),
        (
            "manifest of a future format".into(),
            vec!["restore".into(), s(&future), "--datadir".into(), t.clone()],
            2,
            vec!["format = 99".into(), "not a usable backup".into()],
        ),
        (
            "backup without its files".into(),
            vec![
                "restore".into(),
                s(&no_files),
                "--datadir".into(),
                t.clone(),
            ],
            2,
            vec![s(&no_files), "is missing".into()],
        ),
        (
            "stored copy outside the backup".into(),
            vec![
                "restore".into(),
                s(&escaping),
                "--datadir".into(),
                t.clone(),
            ],
            2,
            vec!["../../../../etc".into()],
        ),
        (
            "a partial backup".into(),
            vec!["restore".into(), s(&partial), "--datadir".into(), t.clone()],
            2,
            vec!["is not a backup".into()],
        ),
    ];
    for (name, args, code, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let says: Vec<&str> = says.iter().map(String::as_str).collect();
        let cfg = std::fs::read_to_string(&config).unwrap();
        if let Some(f) = c.run_one(S, &name, cfg, &args, code, &says, &dest) {
            failures.push(f);
        }
        if target.exists() {
            failures.push(format!("[{S}] {name}: the restore target {t} was created"));
            let _ = std::fs::remove_dir_all(&target);
        }
        let scratch: Vec<String> = listing(&dest)
            .into_iter()
            .filter(|n| n.starts_with(".dbsnap-verify"))
            .collect();
        if !scratch.is_empty() {
            failures.push(format!("[{S}] {name}: scratch copies left: {scratch:?}"));
        }
    }
    failures
}

/// Replace the whole line that starts with `prefix` by `line`.
fn regex_replace_line(text: &str, prefix: &str, line: &str) -> String {
    text.lines()
        .map(|l| match l.starts_with(prefix) {
            true => line.to_string(),
            false => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn hostile_inputs_fail_clearly_and_change_nothing() {
    let started = Instant::now();
    let mut c = Corpus::new();
    config_cases(&mut c);
    missing_config_cases(&mut c);
    destination_cases(&mut c);
    database_cases(&mut c);
    cli_cases(&mut c);
    option_file_cases(&mut c);
    journal_cases(&mut c);
    let mut failures = c.run();
    // No command of the corpus may create what it names (cli: restore's --datadir).
    let restore_target = c.dir().join("new datadir");
    if restore_target.exists() {
        failures.push(format!("[cli] {} was created", restore_target.display()));
    }
    failures.extend(run_mounted_destination_cases(&mut c));
    failures.extend(run_foreign_entry_case(&mut c));
    failures.extend(run_tampered_backup_cases(&mut c));
    let tables =
        c.sb.server
            .sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'bank'");
    assert_eq!(tables.trim(), "3", "the bank schema was changed");
    let mut subjects: Vec<&str> = c.cases.iter().map(|k| k.subject).collect();
    subjects.sort();
    subjects.dedup();
    eprintln!(
        "hostile-input corpus: {} cases ({}) in {:.1} s, {} failed",
        c.cases.len() + 1,
        subjects.join(", "),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        c.cases.len() >= 100,
        "the corpus has only {} cases",
        c.cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_datadir_not_on_btrfs_is_refused() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap ext4 ")
        .tempdir()
        .unwrap();
    let server = MariaDb::start(ServerOptions::new(
        &dir.path().join("data"),
        &dir.path().join("run"),
    ));
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = {:?}\nuser = \"root\"\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest:?}\n",
            dir.path().join("state"),
            server.socket
        ),
    )
    .unwrap();
    let out = dbsnap_with(&config, &["backup"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(&dir.path().join("data").display().to_string()),
        "names the path: {err}"
    );
    assert!(
        err.contains("cannot be snapshotted by the btrfs backend"),
        "{err}"
    );
    assert!(
        err.contains("Move the database files onto a btrfs subvolume"),
        "says what to do: {err}"
    );
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

#[test]
fn hostile_paths_work_and_secrets_stay_secret() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap $(touch pwned); 'q' ")
        .tempdir()
        .unwrap();
    let fs = LoopBtrfs::new(dir.path(), "fs; rm -rf x", 512);
    let datadir = fs.subvolume("data $(id)");
    let server = MariaDb::start(ServerOptions::new(&datadir, &dir.path().join("run")));
    bank::create(&server);
    server.sql(
        "CREATE USER 'backup'@'localhost' IDENTIFIED BY 'Sup3r-Secret-Pw';
         GRANT RELOAD, BINLOG MONITOR, PROCESS ON *.* TO 'backup'@'localhost';",
    );
    let dest = dir.path().join("dest `uname` && echo");
    std::fs::create_dir(&dest).unwrap();
    let cnf = dir.path().join("client.cnf");
    std::fs::write(
        &cnf,
        "[client]\nuser = backup\npassword = Sup3r-Secret-Pw\n",
    )
    .unwrap();
    std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("dbsnap.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = {:?}\ndefaults_file = {cnf:?}\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest:?}\n",
            dir.path().join("state $HOME"),
            server.socket
        ),
    )
    .unwrap();
    let out = dbsnap_with(&config, &["-vv", "backup", "--json"]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "warns about the password file: {err}"
    );
    let manifest_path = common::stdout_json(&out)["path"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest =
        std::fs::read_to_string(Path::new(&manifest_path).join("manifest.toml")).unwrap();
    for (what, text) in [
        ("stderr", &err),
        ("stdout", &String::from_utf8_lossy(&out.stdout).into_owned()),
        ("manifest", &manifest),
    ] {
        assert!(
            !text.contains("Sup3r-Secret-Pw"),
            "the password appears in {what}"
        );
    }
    assert!(
        !Path::new("pwned").exists() && !dir.path().join("pwned").exists(),
        "a shell ran"
    );
    let stored = Path::new(&manifest_path)
        .join("files")
        .join(datadir.strip_prefix("/").unwrap());
    assert!(stored.join("bank/accounts.ibd").exists());
}

/// The documented limit is on what the user types: a 64-character label makes a kept
/// snapshot (its full name, `dbsnap-<timestamp>-<label>`, is 88 characters).
#[test]
fn a_label_of_the_documented_64_characters_is_taken() {
    let sb = Sandbox::new();
    let label = "L".repeat(64);
    let out = sb.dbsnap(&["snapshot", "create", "--label", &label, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = common::stdout_json(&out)["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(name.ends_with(&label), "{name}");
    let out = sb.dbsnap(&["snapshot", "release", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
