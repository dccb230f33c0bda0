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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// New files (a fresh or hard-link-seeded destination).
    Whole,
    /// Changed blocks rewritten in place (a reflink-seeded destination).
    InPlace,
}

/// Run rsync for every item in turn. `progress` is called with the bytes copied so far
/// across all items.
/// `link_dest`, when given, is the previous backup's copy of each item (same order):
/// unchanged files become hard links to it.
pub async fn copy(
    items: &[CopyItem],
    writes: Writes,
    link_dest: Option<&[PathBuf]>,
    bwlimit: Option<bytesize::ByteSize>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<TransferStats> {
    let started = Instant::now();
    let mut total = TransferStats {
        ..Default::default()
    };
    let mut done = 0;
    for (i, item) in items.iter().enumerate() {
        let args = argv(item, writes, link_dest.map(|l| l[i].as_path()), bwlimit);
        let done_before = done;
        let stats = run_one(item, args, &|b| progress(done_before + b)).await?;
        done += stats.bytes.max(stats.bytes_written);
        total.bytes += stats.bytes;
        total.bytes_written += stats.bytes_written;
        total.files += stats.files;
    }
    total.duration_ms = started.elapsed().as_millis() as u64;
    Ok(total)
}

fn argv(
    item: &CopyItem,
    writes: Writes,
    link_dest: Option<&Path>,
    bwlimit: Option<bytesize::ByteSize>,
) -> Vec<String> {
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
    ]
    .map(String::from)
    .to_vec();
    match writes {
        Writes::Whole => {}
        // Local copies default to whole files; the delta algorithm finds unchanged blocks.
        Writes::InPlace => args.extend(["--inplace".to_string(), "--no-whole-file".to_string()]),
    }
    if let Some(previous) = link_dest {
        args.push(format!("--link-dest={}", previous.display()));
    }
    if let Some(limit) = bwlimit {
        args.push(format!("--bwlimit={}K", (limit.as_u64() / 1024).max(1)));
    }
    for path in &item.exclude {
        args.push(format!("--exclude=/{}", path.display()));
    }
    // Trailing slashes: copy the directory's contents, not the directory itself.
    args.push(format!("{}/", item.from.display()));
    args.push(format!("{}/", item.to.display()));
    args
}

async fn run_one(
    item: &CopyItem,
    args: Vec<String>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<TransferStats> {
    tracing::debug!(?args, "rsync");
    // If dbsnap itself is killed (kill -9, OOM), rsync must not read on from the
    // snapshot: it would keep a ZFS clone busy (`dbsnap cleanup` fails) and write into a
    // partial directory that cleanup has removed.
    let mut command = dying_with_dbsnap("rsync");
    // SAFETY: ioprio_set is a plain system call, async-signal-safe; nothing else runs
    // here. The copy's I/O goes after the server's, where the scheduler honours it.
    unsafe {
        command.pre_exec(|| {
            super::pace::set_lowest_io_priority();
            Ok(())
        });
    }
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
        read_progress(stdout, progress),
        read_all(stderr),
        child.wait()
    );
    let status = status?;
    group.disarm();
    let out = out?;
    if !status.success() {
        let err = err.unwrap_or_default();
        let class =
            if err.contains("No space left on device") || err.contains("Disk quota exceeded") {
                Class::Destination
            } else {
                Class::Transfer
            };
        let what = if class == Class::Destination {
            "the destination is full: free space there or point [backup] dest elsewhere"
        } else {
            "the copy failed"
        };
        return Err(fail(
            class,
            format!(
                "{what} (rsync from {} to {} exited with {status}): {}",
                item.from.display(),
                item.to.display(),
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
            Writes::Whole,
            None,
            Some(bytesize::ByteSize::mib(10)),
        );
        assert!(a.contains(&"--delete".to_string()) && !a.contains(&"--inplace".to_string()));
        let b = argv(
            &item,
            Writes::InPlace,
            Some(Path::new("/b/prev/files/x")),
            None,
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
        let stats = copy(&[item], Writes::Whole, None, None, &|_| {})
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
