//! The rsync driver: one `rsync` per directory, argv only, with progress parsed from
//! `--info=progress2` and totals from `--stats`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use dbsnap_backend_api::command::{dying_with_dbsnap, ProcessGroup};

use crate::error::{fail, Class};
use crate::manifest::TransferStats;

/// Copy the contents of `from` into `to`, leaving out `exclude` (paths relative to `from`).
#[derive(Debug, Clone)]
pub struct CopyItem {
    pub from: PathBuf,
    pub to: PathBuf,
    pub exclude: Vec<PathBuf>,
}

/// How the copy is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Writes {
    /// New files (a fresh or hard-link-seeded destination).
    #[default]
    Whole,
    /// Changed blocks rewritten in place (a reflink-seeded destination).
    InPlace,
}

/// The other end of an rsync over ssh.
#[derive(Debug, Clone)]
pub struct Remote {
    /// rsync's `-e` (see [`crate::ssh::Session::rsync_shell`]).
    pub shell: String,
    /// `user@host`.
    pub host: String,
    /// Which side of every [`CopyItem`] is on the remote host.
    pub side: Side,
    /// Compression on the wire: `Some(None)` at rsync's default level.
    pub compress: Option<Option<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `to` is remote (a backup).
    Dest,
    /// `from` is remote (a restore or a pull for verification).
    Source,
}

/// Everything about a copy but its items.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    pub writes: Writes,
    /// The previous backup's copy of each item (same order): unchanged files become
    /// hard links to it.
    pub link_dest: Option<&'a [PathBuf]>,
    pub bwlimit: Option<bytesize::ByteSize>,
    pub remote: Option<&'a Remote>,
}

/// Run rsync for every item in turn. `progress` is called with the bytes copied so far
/// across all items; `sent` is called with the item's index and the path
/// (relative to the item) of each file whose data rsync sends, as it starts on it.
pub async fn copy_with(
    items: &[CopyItem],
    options: Options<'_>,
    progress: &(dyn Fn(u64) + Sync),
    sent: &(dyn Fn(usize, PathBuf) + Sync),
) -> anyhow::Result<TransferStats> {
    let started = Instant::now();
    let mut total = TransferStats {
        ..Default::default()
    };
    let mut done = 0;
    for (i, item) in items.iter().enumerate() {
        let link_dest = options.link_dest.map(|l| l[i].as_path());
        let args = argv(item, options, link_dest);
        let done_before = done;
        let stats = run_one(args, &|b| progress(done_before + b), &|p| sent(i, p)).await?;
        done += stats.bytes.max(stats.bytes_written);
        total.bytes += stats.bytes;
        total.bytes_written += stats.bytes_written;
        total.files += stats.files;
        if let (Some(w), Some(_)) = (stats.wire_bytes, options.remote) {
            *total.wire_bytes.get_or_insert(0) += w;
        }
    }
    total.duration_ms = started.elapsed().as_millis() as u64;
    Ok(total)
}

fn argv(item: &CopyItem, options: Options<'_>, link_dest: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--archive",
        // A seeded destination holds files the server has since deleted (a dropped table).
        "--delete",
        "--hard-links",
        "--numeric-ids",
        "--sparse",
        "--one-file-system",
        "--no-inc-recursive",
        "--info=progress2",
        "--stats",
        // Each file whose data is sent, as it starts (for the checksums).
        "--out-format=%i %n",
    ]
    .map(String::from)
    .to_vec();
    match options.writes {
        Writes::Whole => {}
        // Local copies default to whole files; the delta algorithm finds unchanged blocks.
        Writes::InPlace => args.extend(["--inplace".to_string(), "--no-whole-file".to_string()]),
    }
    if let Some(previous) = link_dest {
        args.push(format!("--link-dest={}", previous.display()));
    }
    if let Some(limit) = options.bwlimit {
        args.push(format!("--bwlimit={}K", (limit.as_u64() / 1024).max(1)));
    }
    for path in &item.exclude {
        args.push(format!("--exclude=/{}", path.display()));
    }
    // Trailing slashes: copy the directory's contents, not the directory itself.
    let (mut from, mut to) = (
        format!("{}/", item.from.display()),
        format!("{}/", item.to.display()),
    );
    if let Some(remote) = options.remote {
        args.extend([
            "-e".to_string(),
            remote.shell.clone(),
            // The arguments travel inside rsync's protocol, not on the remote shell's
            // command line: a path holding `; $( ) '` or a newline stays a path.
            "--secluded-args".into(),
            // A file cut off by a lost connection is kept, so the next run resumes it.
            "--partial".into(),
        ]);
        match remote.compress {
            None => {}
            Some(None) => args.push("--compress".into()),
            Some(Some(level)) => {
                args.extend(["--compress".into(), format!("--compress-level={level}")])
            }
        }
        match remote.side {
            Side::Dest => {
                args.push("--mkpath".into());
                to = format!("{}:{to}", remote.host);
            }
            Side::Source => from = format!("{}:{from}", remote.host),
        }
    }
    args.push(from);
    args.push(to);
    args
}

async fn run_one(
    args: Vec<String>,
    progress: &(dyn Fn(u64) + Sync),
    sent: &(dyn Fn(PathBuf) + Sync),
) -> anyhow::Result<TransferStats> {
    tracing::debug!(?args, "rsync");
    // If dbsnap itself is killed (kill -9, OOM), rsync must not read on from the
    // snapshot: it would keep a ZFS clone busy (`dbsnap cleanup` fails) and write into a
    // partial directory that cleanup has removed.
    let mut command = dying_with_dbsnap("rsync");
    let mut child = command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|e| {
            fail(
                Class::Transfer,
                format!("cannot start rsync ({e}); install it (apt-get install rsync)"),
            )
        })?;
    // rsync forks a receiver and a generator; they go with it when the copy is cancelled.
    let mut group = ProcessGroup::of(&child);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (out, err, status) = tokio::join!(
        read_progress(stdout, progress, sent),
        read_all(stderr),
        child.wait()
    );
    let status = status?;
    group.disarm();
    let out = out?;
    if !status.success() {
        let err = err.unwrap_or_default();
        let full = err.contains("No space left on device") || err.contains("Disk quota exceeded");
        // 255: ssh lost the connection; 12 and 30/35: rsync's protocol stream broke off.
        let lost = matches!(status.code(), Some(255 | 12 | 30 | 35))
            || err.contains("connection unexpectedly closed")
            || err.contains("Broken pipe");
        let (class, what) = match (full, lost && args.iter().any(|a| a == "-e")) {
            (true, _) => (
                Class::Destination,
                "the destination is full: free space there or point [backup] dest elsewhere",
            ),
            (false, true) => (
                Class::Remote,
                "the connection to the backup host was lost: the copy so far stays there as a \
                 partial backup, and the next run resumes from it",
            ),
            (false, false) => (Class::Transfer, "the copy failed"),
        };
        // The last two arguments are the real ends, `host:` included.
        let ends = &args[args.len() - 2..];
        return Err(fail(
            class,
            format!(
                "{what} (rsync from {} to {} exited with {status}): {}",
                ends[0],
                ends[1],
                last_lines(&err, 5)
            ),
        ));
    }
    Ok(parse_stats(&out))
}

/// Read rsync's stdout, reporting progress lines (separated by `\r`) as they come, and
/// return everything for the final statistics.
async fn read_progress(
    mut pipe: impl AsyncRead + Unpin,
    progress: &(dyn Fn(u64) + Sync),
    sent: &(dyn Fn(PathBuf) + Sync),
) -> std::io::Result<String> {
    let mut all = Vec::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    let mut last_report = Instant::now() - Duration::from_secs(1);
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                if let Some(path) = parse_sent(&line) {
                    sent(path);
                }
                if let Some(bytes) = parse_progress(&String::from_utf8_lossy(&line)) {
                    if last_report.elapsed() >= Duration::from_millis(200) {
                        progress(bytes);
                        last_report = Instant::now();
                    }
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    Ok(String::from_utf8_lossy(&all).into_owned())
}

async fn read_all(mut pipe: impl AsyncRead + Unpin) -> std::io::Result<String> {
    let mut s = String::new();
    pipe.read_to_string(&mut s).await?;
    Ok(s)
}

/// `     32,768 100%    1.23MB/s    0:00:00 (xfr#1, to-chk=0/3)` → 32768.
fn parse_progress(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let bytes = fields.next()?;
    let percent = fields.next()?;
    if !percent.ends_with('%') {
        return None;
    }
    parse_number(bytes)
}

/// `<f+++++++++ dir/name` (`%i %n`: the file's data is sent) → `dir/name`. rsync
/// escapes unprintable bytes in names as `\#ooo` (octal).
fn parse_sent(line: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    if line.len() < 13 || line[11] != b' ' || !matches!(line[0], b'<' | b'>') || line[1] != b'f' {
        return None;
    }
    let name = &line[12..];
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let octal = name.get(i + 2..i + 5).and_then(|o| {
            std::str::from_utf8(o)
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        });
        match (name[i], name.get(i + 1), octal) {
            (b'\\', Some(b'#'), Some(byte)) => {
                out.push(byte);
                i += 5;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

fn parse_number(s: &str) -> Option<u64> {
    s.replace(',', "").parse().ok()
}

/// Totals from `--stats`.
fn parse_stats(out: &str) -> TransferStats {
    let field = |label: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(parse_number)
            .unwrap_or(0)
    };
    TransferStats {
        bytes: field("Total transferred file size:"),
        bytes_written: field("Literal data:"),
        files: field("Number of regular files transferred:"),
        wire_bytes: Some(field("Total bytes sent:") + field("Total bytes received:")),
        ..Default::default()
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_progress2_lines() {
        assert_eq!(
            parse_progress("     32,768 100%    0.00kB/s    0:00:00 (xfr#1, to-chk=0/3)"),
            Some(32768)
        );
        assert_eq!(
            parse_progress("  1,234,567,890  45%   12.34MB/s    0:01:05"),
            Some(1_234_567_890)
        );
        assert_eq!(parse_progress("Number of files: 3"), None);
        assert_eq!(parse_progress(""), None);
    }

    #[test]
    fn sent_files_are_read_from_the_itemized_lines_with_their_escapes() {
        assert_eq!(
            parse_sent(b"<f+++++++++ we ird\\#012name"),
            Some(PathBuf::from("we ird\nname"))
        );
        assert_eq!(
            parse_sent(b">f.st...... sub/b"),
            Some(PathBuf::from("sub/b"))
        );
        assert_eq!(parse_sent(b"cd+++++++++ sub/"), None);
        assert_eq!(parse_sent(b".f...p..... sub/b"), None);
        assert_eq!(parse_sent(b"*deleting   old"), None);
        assert_eq!(parse_sent(b"    32,768 100%"), None);
    }

    #[test]
    fn an_ssh_copy_names_the_host_and_keeps_its_arguments_off_the_remote_shell() {
        let item = CopyItem {
            from: "/snap/x".into(),
            to: "/srv/b; $(x)/n.partial/files/x".into(),
            exclude: vec![],
        };
        let remote = Remote {
            shell: "ssh -o ControlPath=/s".into(),
            host: "u@h".into(),
            side: Side::Dest,
            compress: Some(Some(3)),
        };
        let a = argv(
            &item,
            Options {
                remote: Some(&remote),
                ..Options::default()
            },
            None,
        );
        for want in [
            "--secluded-args",
            "--partial",
            "--mkpath",
            "--compress-level=3",
        ] {
            assert!(a.contains(&want.to_string()), "{want}: {a:?}");
        }
        assert_eq!(a[a.len() - 1], "u@h:/srv/b; $(x)/n.partial/files/x/");
    }

    #[test]
    fn parses_stats() {
        let out = "\nNumber of files: 12 (reg: 10, dir: 2)\nNumber of created files: 11\n\
                   Number of regular files transferred: 10\nTotal file size: 79,691,776 bytes\n\
                   Total transferred file size: 79,691,776 bytes\nLiteral data: 1,234 bytes\n";
        let s = parse_stats(out);
        assert_eq!(s.bytes, 79_691_776);
        assert_eq!(s.bytes_written, 1234);
        assert_eq!(s.files, 10);
    }

    #[test]
    fn argv_copies_contents_and_anchors_excludes() {
        let item = CopyItem {
            from: "/snap/x y/mysql".into(),
            to: "/b/n.partial/files/var/lib/mysql".into(),
            exclude: vec!["host.pid".into()],
        };
        let a = argv(
            &item,
            Options {
                bwlimit: Some(bytesize::ByteSize::mib(10)),
                ..Options::default()
            },
            None,
        );
        assert!(a.contains(&"--delete".to_string()) && !a.contains(&"--inplace".to_string()));
        let b = argv(
            &item,
            Options {
                writes: Writes::InPlace,
                ..Options::default()
            },
            Some(Path::new("/b/prev/files/x")),
        );
        assert!(b.contains(&"--inplace".to_string()) && b.contains(&"--no-whole-file".to_string()));
        assert!(b.contains(&"--link-dest=/b/prev/files/x".to_string()));
        assert!(a.contains(&"--bwlimit=10240K".to_string()));
        assert!(a.contains(&"--exclude=/host.pid".to_string()));
        assert_eq!(a[a.len() - 2], "/snap/x y/mysql/");
        assert_eq!(a[a.len() - 1], "/b/n.partial/files/var/lib/mysql/");
    }

    #[tokio::test]
    async fn copies_a_directory_with_hostile_names() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let weird = src.path().join("a b; $(touch pwned) 'q'");
        std::fs::create_dir(&weird).unwrap();
        std::fs::write(weird.join("f"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.path().join("x.pid"), "1").unwrap();
        let to = dst.path().join("out dir");
        std::fs::create_dir(&to).unwrap();
        let item = CopyItem {
            from: src.path().into(),
            to: to.clone(),
            exclude: vec!["x.pid".into()],
        };
        let stats = copy_with(&[item], Options::default(), &|_| {}, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(stats.bytes, 100_000);
        assert_eq!(
            std::fs::read(to.join("a b; $(touch pwned) 'q'/f"))
                .unwrap()
                .len(),
            100_000
        );
        assert!(!to.join("x.pid").exists());
        assert!(!std::path::Path::new("pwned").exists());
    }
}
