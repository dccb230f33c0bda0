//! The Debian package as an administrator meets it, on this machine: `dpkg -i` the .deb
//! that packaging/build-deb.sh built, then the binary, man pages, completions, plugins,
//! config and state directory are where they belong; `systemd-analyze verify` passes on
//! every unit; the backup unit's ExecStart and ExecStartPost lines, executed as written,
//! back up a real MariaDB on btrfs and prune; `dpkg -r` keeps the configuration and
//! `dpkg --purge` keeps the backups. The package is purged at the end, pass or fail.
//!
//! Ignored in the plain test run (it installs /usr/bin/dbsnap on the machine):
//! scripts/test.sh's "package" tier builds the .deb and runs it with --ignored. Every
//! other test runs the freshly built binary (CARGO_BIN_EXE_dbsnap), never /usr/bin/dbsnap.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Sandbox;

const UNIT_DIR: &str = "/lib/systemd/system";
const UNITS: &[&str] = &[
    "dbsnap-backup.service",
    "dbsnap-backup.timer",
    "dbsnap-backup@.service",
    "dbsnap-backup@.timer",
    "dbsnap-cleanup.service",
    "dbsnap-cleanup.timer",
    "dbsnap-cleanup@.service",
    "dbsnap-cleanup@.timer",
    "dbsnap-failure@.service",
];

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ {program} {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, text) = run(program, args);
    assert!(ok, "{program} {args:?} failed:\n{text}");
    text
}

fn deb() -> PathBuf {
    let arch = must("dpkg", &["--print-architecture"]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/debian/dbsnap_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    assert!(
        path.is_file(),
        "{} is missing: run packaging/build-deb.sh first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Purges the package and removes the test's configuration, however the test ends.
struct Installed {
    extra_config: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.extra_config);
        run("dpkg", &["--purge", "dbsnap"]);
    }
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

/// The words of `KEY=` in a unit file, with `%i` replaced by `instance`.
fn exec_line(unit: &str, key: &str, instance: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(UNIT_DIR).join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{unit} has no {key}="));
    line.split_whitespace()
        .map(|w| w.replace("%i", instance))
        .collect()
}

/// Run a unit's command line as systemd would: as root, no shell, systemd's PATH.
fn exec_as_written(argv: &[String]) -> std::process::Output {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    eprintln!(
        "$ {}\n--- exit {:?}\n{}{}",
        argv.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
#[ignore = "installs the .deb on this machine: scripts/test.sh's package tier runs it"]
fn the_deb_installs_backs_up_from_its_unit_and_removes_cleanly() {
    let deb = deb();
    if run("dpkg-query", &["-W", "dbsnap"]).0 {
        eprintln!("a dbsnap package is installed already (an interrupted tier?): purging it first");
        must("dpkg", &["--purge", "dbsnap"]);
    }
    let instance = format!("pkgtest-{}", std::process::id());
    let extra_config = PathBuf::from(format!("/etc/dbsnap/{instance}.toml"));
    must("dpkg", &["-i", deb.to_str().unwrap()]);
    let _installed = Installed {
        extra_config: extra_config.clone(),
    };

    // What is installed, and where.
    let version = must("/usr/bin/dbsnap", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("dbsnap {}", env!("CARGO_PKG_VERSION"))
    );
    for page in [
        "dbsnap",
        "dbsnap-backup",
        "dbsnap-status",
        "dbsnap-snapshot-create",
    ] {
        let at = must("man", &["-w", page]);
        assert_eq!(at.trim(), format!("/usr/share/man/man1/{page}.1.gz"));
    }
    for (file, needle) in [
        ("/usr/share/bash-completion/completions/dbsnap", "_dbsnap()"),
        (
            "/usr/share/zsh/vendor-completions/_dbsnap",
            "#compdef dbsnap",
        ),
        (
            "/usr/share/fish/vendor_completions.d/dbsnap.fish",
            "complete -c dbsnap",
        ),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(needle) && text.contains("status"), "{file}");
    }
    for plugin in ["dbsnap-backend-btrfs-sh", "dbsnap-backend-fsfreeze"] {
        assert_eq!(mode(&format!("/usr/lib/dbsnap/plugins/{plugin}")), 0o755);
    }
    assert_eq!(mode("/etc/dbsnap/dbsnap.toml"), 0o640);
    assert_eq!(mode("/var/lib/dbsnap"), 0o700);
    let conffiles = must("dpkg-query", &["-W", "-f", "${Conffiles}", "dbsnap"]);
    assert!(conffiles.contains("/etc/dbsnap/dbsnap.toml"), "{conffiles}");

    // Every unit verifies (executables, man pages in Documentation=, OnFailure= target).
    let paths: Vec<String> = UNITS.iter().map(|u| format!("{UNIT_DIR}/{u}")).collect();
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let (ok, text) = run("systemd-analyze", &args);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    // The backup unit's command lines, as written, on a real server: two backups, then
    // prune keeps the newest (keep_last = 1).
    let sb = Sandbox::new();
    let config = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(
        &extra_config,
        format!("{config}\n[retention]\nkeep_last = 1\n"),
    )
    .unwrap();
    let start = exec_line("dbsnap-backup@.service", "ExecStart", &instance);
    let post = exec_line("dbsnap-backup@.service", "ExecStartPost", &instance);
    assert_eq!(start[0], "/usr/bin/dbsnap");
    for round in 1..=2 {
        let out = exec_as_written(&start);
        assert!(out.status.success(), "backup {round} from the unit failed");
        assert_eq!(sb.backups().len(), round);
    }
    let newest = sb.backups().pop().unwrap();
    let out = exec_as_written(&post);
    assert!(out.status.success(), "prune from the unit failed");
    assert_eq!(sb.backups(), [newest]);
    let cleanup = exec_line("dbsnap-cleanup@.service", "ExecStart", &instance);
    assert!(exec_as_written(&cleanup).status.success());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    std::fs::remove_file(&extra_config).unwrap();

    // Remove keeps the configuration; purge removes it but never the backups.
    must("dpkg", &["-r", "dbsnap"]);
    assert!(!Path::new("/usr/bin/dbsnap").exists());
    assert!(!Path::new("/lib/systemd/system/dbsnap-backup@.service").exists());
    assert!(
        Path::new("/etc/dbsnap/dbsnap.toml").is_file(),
        "dpkg -r removed the config"
    );
    must("dpkg", &["--purge", "dbsnap"]);
    assert!(!Path::new("/etc/dbsnap/dbsnap.toml").exists());
    assert_eq!(sb.backups().len(), 1, "purge touched the backups");
}
