//! rsync's server side as a confined key allows it: the shapes dbsnap's rsync sends
//! (push to a backup, pull for a restore or verification), nothing else.
//!
//! dbsnap runs rsync with `--secluded-args`: the command line sshd sees is only
//! `rsync --server [--sender] -s<letters>`, and the real arguments follow on stdin
//! (`rsync\0ARG\0...\0\0`) ahead of the protocol. They are read here byte by byte (so
//! that not one byte of the protocol behind them is taken), checked, and handed to
//! the real rsync on its command line instead, with rsync's own confinement added:
//! `--munge-links` (no symlink it writes can be followed, and it restores the ones it
//! reads), `--confine-root=ROOT` (filter-rule files the client names stay inside) and,
//! when it receives, `--drop-D` (no device or special files).

use std::io::Read;
use std::path::Path;

use super::paths::{Depth, Root};

/// The short options allowed in the server's option cluster (before its `e` part):
/// `s` (secluded args), what `--archive --hard-links --one-file-system --sparse`,
/// `--ignore-times` and `--compress` set, and `R` (relative names, which a
/// `--files-from` list implies: the receiver still refuses names with `..` or a
/// leading `/`, and every name lands below the checked destination).
const SHORT: &str = "slHogDtprxSIzR";

/// What the value of a long option is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Value {
    None,
    /// Digits (a rate, a level).
    Number,
    /// Printable text that only shapes the server's messages (`--log-format`).
    Text,
    /// A path below the root, given as `--opt=PATH` or as the next argument.
    Path,
}

/// The long options dbsnap's rsync passes to the server.
const LONG: &[(&str, Value)] = &[
    ("delete", Value::None),
    ("delete-during", Value::None),
    ("delete-delay", Value::None),
    ("delete-after", Value::None),
    ("numeric-ids", Value::None),
    ("inplace", Value::None),
    ("no-W", Value::None),
    ("partial", Value::None),
    ("mkpath", Value::None),
    ("stats", Value::None),
    ("new-compress", Value::None),
    ("old-compress", Value::None),
    ("bwlimit", Value::Number),
    ("compress-level", Value::Number),
    ("log-format", Value::Text),
    ("link-dest", Value::Path),
    ("copy-dest", Value::Path),
];

/// At most this much of secluded arguments is read (dbsnap sends well under 4 KiB).
const ARGS_LIMIT: usize = 64 * 1024;

/// The argv to run for the rsync command line `words` (split from
/// `SSH_ORIGINAL_COMMAND`) whose secluded arguments `stdin` holds.
pub fn check(words: &[String], stdin: &mut impl Read, root: &Root) -> Result<Vec<String>, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (sender, cluster) = match words.as_slice() {
        ["rsync", "--server", "--sender", cluster] => (true, *cluster),
        ["rsync", "--server", cluster] => (false, *cluster),
        _ => {
            return Err(
                "rsync must be `rsync --server [--sender] -s...` with its arguments in its \
                 protocol (--secluded-args), as dbsnap runs it"
                    .into(),
            )
        }
    };
    let letters = check_cluster(cluster)?;
    let args = read_secluded(stdin)?;
    let Some(("rsync", args)) = args.split_first().map(|(a, rest)| (a.as_str(), rest)) else {
        return Err("rsync's secluded arguments do not start with `rsync`".into());
    };
    let mut argv: Vec<String> = vec!["rsync".into(), "--server".into()];
    if sender {
        argv.push("--sender".into());
    }
    argv.push(letters);
    let mut rest = args.iter();
    let mut saw_dot = false;
    while let Some(arg) = rest.next() {
        if arg == "." {
            saw_dot = true;
            break;
        }
        let Some(long) = arg.strip_prefix("--") else {
            return Err(format!("the rsync option {arg:?} is not one dbsnap sends"));
        };
        let (name, inline) = match long.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (long, None),
        };
        let Some(&(_, kind)) = LONG.iter().find(|(n, _)| *n == name) else {
            return Err(format!("the rsync option --{name} is not one dbsnap sends"));
        };
        let value = match (kind, inline) {
            (Value::None, None) => {
                argv.push(arg.clone());
                continue;
            }
            (Value::None, Some(_)) => return Err(format!("--{name} takes no value")),
            (Value::Path, None) => rest
                .next()
                .map(String::as_str)
                .ok_or_else(|| format!("--{name} lacks its path"))?,
            (_, Some(value)) => value,
            (_, None) => return Err(format!("--{name} lacks its value")),
        };
        match kind {
            Value::Number if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {}
            Value::Text if value.bytes().all(|b| (b' '..=b'~').contains(&b)) => {}
            Value::Path => root.check(Path::new(value), Depth::Below)?,
            _ => return Err(format!("--{name}={value:?} is not a value dbsnap sends")),
        }
        argv.push(format!("--{name}={value}"));
    }
    if !saw_dot {
        return Err("rsync's secluded arguments lack the `.` before the paths".into());
    }
    let paths: Vec<&String> = rest.collect();
    match (sender, paths.len()) {
        (_, 0) => return Err("rsync names no path".into()),
        (false, 1) | (true, _) => {}
        (false, _) => return Err("a receiving rsync takes one destination".into()),
    }
    for path in &paths {
        root.check(Path::new(path.as_str()), Depth::Below)?;
    }
    argv.push("--munge-links".into());
    argv.push(format!("--confine-root={}", root.path().display()));
    if !sender {
        argv.push("--drop-D".into());
    }
    argv.push(".".into());
    argv.extend(paths.into_iter().cloned());
    Ok(argv)
}

/// The option cluster without its `s` (the arguments come on the command line now),
/// when every letter is allowed.
fn check_cluster(cluster: &str) -> Result<String, String> {
    let Some(body) = cluster.strip_prefix('-') else {
        return Err(format!("{cluster:?} is not rsync's option cluster"));
    };
    // `e` starts the protocol's capability flags (`e.iLsfxCIvu`), not options.
    let (letters, capabilities) = body.split_at(body.find('e').unwrap_or(body.len()));
    if !letters.contains('s') {
        return Err(
            "rsync must send its arguments in its protocol (--secluded-args), as dbsnap does"
                .into(),
        );
    }
    if let Some(bad) = letters.chars().find(|c| !SHORT.contains(*c)) {
        return Err(format!("the rsync option -{bad} is not one dbsnap sends"));
    }
    let flags_ok = capabilities
        .chars()
        .skip(1)
        .all(|c| c.is_ascii_alphanumeric() || c == '.');
    if !flags_ok {
        return Err(format!("{cluster:?} is not rsync's option cluster"));
    }
    Ok(format!("-{}{capabilities}", letters.replace('s', "")))
}

/// The NUL-ended arguments up to the empty one that ends them, read one byte at a time.
fn read_secluded(stdin: &mut impl Read) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = Vec::new();
    let mut byte = [0u8];
    for _ in 0..ARGS_LIMIT {
        match stdin.read(&mut byte) {
            Ok(0) => return Err("rsync's secluded arguments ended early".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading rsync's secluded arguments: {e}")),
        }
        match (byte[0], current.is_empty()) {
            (0, true) => return Ok(args),
            (0, false) => args.push(
                String::from_utf8(std::mem::take(&mut current))
                    .map_err(|_| "an rsync argument is not UTF-8".to_string())?,
            ),
            (b, _) => current.push(b),
        }
    }
    Err(format!(
        "rsync's secluded arguments exceed {ARGS_LIMIT} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    fn secluded(args: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for a in args {
            bytes.extend_from_slice(a.as_bytes());
            bytes.push(0);
        }
        bytes.push(0);
        bytes.extend_from_slice(b"PROTOCOL");
        bytes
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: Root,
        dir: String,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("backups");
        std::fs::create_dir_all(dir.join("A")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
        Fixture {
            root: Root::new(&dir).unwrap(),
            dir: std::fs::canonicalize(&dir).unwrap().display().to_string(),
            _tmp: tmp,
        }
    }

    #[test]
    fn a_push_and_a_pull_as_dbsnap_sends_them_run_with_rsyncs_own_confinement() {
        let f = fixture();
        let dest = format!("{}/B.partial/files/var/lib/mysql/", f.dir);
        let base = format!("{}/A/files/var/lib/mysql", f.dir);
        let mut stdin = secluded(&[
            "rsync",
            "--delete",
            "--numeric-ids",
            "--log-format=%i",
            "--link-dest",
            &base,
            "--partial",
            "--mkpath",
            "--bwlimit=8192",
            ".",
            &dest,
        ]);
        let mut reader = stdin.as_slice();
        let argv = check(
            &words("rsync --server -slHogDtprxSe.iLsfxCIvu"),
            &mut reader,
            &f.root,
        )
        .unwrap();
        assert_eq!(reader, b"PROTOCOL", "not one byte of the protocol was read");
        assert_eq!(argv[..3], ["rsync", "--server", "-lHogDtprxSe.iLsfxCIvu"]);
        assert!(argv.contains(&format!("--link-dest={base}")));
        assert!(argv.contains(&"--munge-links".to_string()));
        assert!(argv.contains(&"--drop-D".to_string()));
        assert!(argv.contains(&format!("--confine-root={}", f.dir)));
        assert_eq!(argv[argv.len() - 2..], [".".to_string(), dest]);

        stdin = secluded(&[
            "rsync",
            "--numeric-ids",
            ".",
            &format!("{}/A/files/", f.dir),
        ]);
        let argv = check(
            &words("rsync --server --sender -slHogDtprxSe.iLsfxCIvu"),
            &mut stdin.as_slice(),
            &f.root,
        )
        .unwrap();
        assert_eq!(argv[1..3], ["--server", "--sender"]);
        assert!(!argv.contains(&"--drop-D".to_string()));
    }

    #[test]
    fn paths_and_options_that_would_reach_outside_are_refused() {
        let f = fixture();
        let push = words("rsync --server -slHogDtprxSe.iLsfxCIvu");
        let refused = |cluster: &[String], args: &[&str]| {
            check(cluster, &mut secluded(args).as_slice(), &f.root).unwrap_err()
        };
        let inside = format!("{}/B/", f.dir);
        for (args, why) in [
            (vec!["rsync", ".", "/tmp/elsewhere/"], "outside"),
            (vec!["rsync", ".", &format!("{}/../x/", f.dir)], "`..`"),
            (
                vec!["rsync", ".", &format!("{}/etc/cron.d/", f.dir)],
                "leads to",
            ),
            (vec!["rsync", "--temp-dir=/tmp", ".", &inside], "--temp-dir"),
            (
                vec!["rsync", "--log-file=/tmp/x", ".", &inside],
                "--log-file",
            ),
            (
                vec!["rsync", "--backup-dir", "/tmp", ".", &inside],
                "--backup-dir",
            ),
            (vec!["rsync", "--link-dest=/etc", ".", &inside], "outside"),
            (
                vec!["rsync", "--copy-dest", "/etc", ".", &inside],
                "outside",
            ),
            (vec!["rsync", "-L", ".", &inside], "-L"),
            (vec!["rsync", ".", &inside, &inside], "one destination"),
            (vec!["rsync", "--delete"], "lack"),
            (vec!["sh", ".", &inside], "start with `rsync`"),
        ] {
            let err = refused(&push, &args);
            assert!(err.contains(why), "{args:?}: {err}");
        }
        for (line, why) in [
            ("rsync --server -lHogDtprxSe.iLsfxCIvu", "secluded"),
            ("rsync --server -sLe.iLsfxCIvu", "-L"),
            ("rsync --server -sKe.iLsfxCIvu", "-K"),
            ("rsync --server -s . /etc", "--server [--sender] -s"),
            ("rsync --daemon -s", "--server [--sender] -s"),
        ] {
            let err = refused(&words(line), &["rsync", ".", &inside]);
            assert!(err.contains(why), "{line}: {err}");
        }
    }
}
