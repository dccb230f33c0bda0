//! The rsync driver: one `rsync` per directory, argv only, with progress parsed from
//! `--info=progress2` and totals from `--stats`.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

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
    /// Files the source shows modified at or after this instant are compared by content,
    /// never skipped because their size and modification time match the destination's
    /// (or the `link_dest` copy's). Set it to a little before the moment the base (or
    /// the resumed partial) was copied from its snapshot: a file written again within
    /// the same tick of the clock as that snapshot keeps its size and time but not its
    /// contents, and rsync's quick check would keep the stale copy.
    pub recheck_since: Option<SystemTime>,
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
        let recheck = match options.recheck_since {
            Some(since) => Recheck::prepare(item, options, link_dest, since)?,
            None => None,
        };
        let mut passes = Vec::new();
        let mut ordinary = argv(item, options, link_dest);
        if let Some(recheck) = &recheck {
            passes.push(recheck.first_pass.clone());
            recheck.leave_to_first_pass(&mut ordinary);
        }
        passes.push(ordinary);
        for args in passes {
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
    }
    total.duration_ms = started.elapsed().as_millis() as u64;
    Ok(total)
}

/// Two passes over an item when some of its files may have changed without their size
/// and time showing it (see [`Options::recheck_since`]): first those files alone,
/// compared by content (`--ignore-times`) and never hard-linked to the base; then the
/// ordinary pass over everything else. The ordinary pass must leave them out, not just
/// find them up to date: with `--link-dest`, rsync replaces a destination file that
/// matches the base's copy by size and time with a hard link to it.
struct Recheck {
    first_pass: Vec<String>,
    /// The files, one per line, as the first pass reads them (`--files-from`).
    _files: tempfile::NamedTempFile,
    /// The same files as anchored patterns for the ordinary pass (`--exclude-from`).
    patterns: tempfile::NamedTempFile,
}

impl Recheck {
    /// `None` when no file was modified since `since`.
    fn prepare(
        item: &CopyItem,
        options: Options<'_>,
        link_dest: Option<&Path>,
        since: SystemTime,
    ) -> anyhow::Result<Option<Self>> {
        let recent = modified_since(item, since)?;
        if recent.is_empty() {
            return Ok(None);
        }
        tracing::debug!(
            files = recent.len(),
            "compared by content: modified within the base's snapshot's clock tick or later"
        );
        let mut files = tempfile::NamedTempFile::new()?;
        let mut patterns = tempfile::NamedTempFile::new()?;
        for path in &recent {
            files.write_all(path.as_os_str().as_bytes())?;
            files.write_all(b"\0")?;
            patterns.write_all(&anchored_pattern(path))?;
            patterns.write_all(b"\0")?;
        }
        files.flush()?;
        patterns.flush()?;
        let mut first_pass = argv(
            item,
            Options {
                link_dest: None,
                ..options
            },
            None,
        );
        let ends = first_pass.split_off(first_pass.len() - 2);
        // Only the listed files: nothing else is there to delete.
        first_pass.retain(|a| a != "--delete");
        if let Some(base) = link_dest {
            // The base's copy is still the delta basis (only changed blocks cross the
            // wire), but the result is a file of its own, never a link to it.
            first_pass.push(format!("--copy-dest={}", base.display()));
        }
        first_pass.extend([
            format!("--files-from={}", files.path().display()),
            "--from0".into(),
            "--ignore-times".into(),
        ]);
        first_pass.extend(ends);
        Ok(Some(Recheck {
            first_pass,
            _files: files,
            patterns,
        }))
    }

    /// Make the ordinary pass leave the rechecked files as the first pass wrote them
    /// (excluded files are not deleted either).
    fn leave_to_first_pass(&self, ordinary: &mut Vec<String>) {
        let ends = ordinary.split_off(ordinary.len() - 2);
        ordinary.extend([
            format!("--exclude-from={}", self.patterns.path().display()),
            "--from0".into(),
        ]);
        ordinary.extend(ends);
    }
}

/// `dir/a*b` → `/dir/a\*b`: an exclude pattern that matches exactly this path from the
/// transfer's root (wildcard characters in the name escaped).
fn anchored_pattern(path: &Path) -> Vec<u8> {
    let mut pattern = vec![b'/'];
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(b);
    }
    pattern
}

/// Regular files below `item.from` (on its filesystem, outside its excludes) modified at
/// or after `since`, relative to `item.from`.
fn modified_since(item: &CopyItem, since: SystemTime) -> anyhow::Result<Vec<PathBuf>> {
    let mut recent = Vec::new();
    let walk = walkdir::WalkDir::new(&item.from)
        .same_file_system(true)
        .into_iter()
        .filter_entry(|e| {
            let relative = e.path().strip_prefix(&item.from).unwrap_or(e.path());
            !item.exclude.iter().any(|x| relative.starts_with(x))
        });
    for entry in walk {
        let entry = entry.map_err(|e| anyhow::anyhow!("reading {}: {e}", item.from.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let modified = entry
            .metadata()
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", entry.path().display()))?
            .modified()?;
        if modified >= since {
            let relative = entry.path().strip_prefix(&item.from)?;
            recent.push(relative.to_path_buf());
        }
    }
    Ok(recent)
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
        let refused = err.contains(crate::destination::ssh::confine::REFUSED);
        let (class, what) = match (full, lost && args.iter().any(|a| a == "-e")) {
            _ if refused => (
                Class::Destination,
                "the backup host's forced command refused the copy: its --root must hold the \
                 destination",
            ),
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

    /// A base backup and a snapshot whose `changed` file was rewritten after the base's
    /// snapshot within the same second: same size, same modification time, other bytes.
    /// `old` was last written long before and is the same on both sides.
    struct SameTickChange {
        base: tempfile::TempDir,
        snapshot: tempfile::TempDir,
        dest: tempfile::TempDir,
        base_started: SystemTime,
    }

    fn same_tick_change() -> SameTickChange {
        let (base, snapshot, dest) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let base_started = SystemTime::now() - Duration::from_secs(60);
        let write = |dir: &Path, name: &str, bytes: &[u8], at: SystemTime| {
            std::fs::write(dir.join(name), bytes).unwrap();
            std::fs::File::options()
                .write(true)
                .open(dir.join(name))
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let tick = base_started + Duration::from_millis(300);
        let long_ago = base_started - Duration::from_secs(3600);
        write(
            base.path(),
            "changed.ibd",
            b"page written before the base",
            tick,
        );
        write(
            snapshot.path(),
            "changed.ibd",
            b"PAGE WRITTEN AFTER THE BASE!",
            tick,
        );
        write(base.path(), "old.ibd", b"unchanged", long_ago);
        write(snapshot.path(), "old.ibd", b"unchanged", long_ago);
        SameTickChange {
            base,
            snapshot,
            dest,
            base_started,
        }
    }

    impl SameTickChange {
        fn item(&self) -> CopyItem {
            CopyItem {
                from: self.snapshot.path().into(),
                to: self.dest.path().into(),
                exclude: vec![],
            }
        }

        fn copied(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dest.path().join(name)).unwrap()
        }
    }

    #[tokio::test]
    async fn a_file_changed_within_the_bases_second_is_copied_not_hard_linked_to_the_stale_base() {
        use std::os::unix::fs::MetadataExt;
        let case = same_tick_change();
        let link_dest = [case.base.path().to_path_buf()];
        let options = Options {
            link_dest: Some(&link_dest),
            recheck_since: Some(case.base_started - Duration::from_secs(2)),
            ..Options::default()
        };
        copy_with(&[case.item()], options, &|_| {}, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(case.copied("changed.ibd"), b"PAGE WRITTEN AFTER THE BASE!");
        // What did not change is still a hard link into the base: the copy stays incremental.
        let old = std::fs::metadata(case.dest.path().join("old.ibd")).unwrap();
        assert_eq!(old.nlink(), 2);

        // Without the recheck, rsync's quick check keeps the stale page: the reason for it.
        let stale = same_tick_change();
        let link_dest = [stale.base.path().to_path_buf()];
        let trusting = Options {
            link_dest: Some(&link_dest),
            ..Options::default()
        };
        copy_with(&[stale.item()], trusting, &|_| {}, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(stale.copied("changed.ibd"), b"page written before the base");
    }

    #[tokio::test]
    async fn a_file_changed_within_the_bases_second_is_rewritten_in_a_seeded_copy() {
        let case = same_tick_change();
        let seeded = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", case.base.path().display()))
            .arg(case.dest.path())
            .status()
            .unwrap();
        assert!(seeded.success());
        let options = Options {
            writes: Writes::InPlace,
            recheck_since: Some(case.base_started - Duration::from_secs(2)),
            ..Options::default()
        };
        copy_with(&[case.item()], options, &|_| {}, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(case.copied("changed.ibd"), b"PAGE WRITTEN AFTER THE BASE!");
        assert_eq!(case.copied("old.ibd"), b"unchanged");
    }

    #[test]
    fn a_rechecked_file_is_left_out_of_the_ordinary_pass_by_its_exact_path() {
        assert_eq!(anchored_pattern(Path::new("db/t.ibd")), b"/db/t.ibd");
        assert_eq!(
            anchored_pattern(Path::new("d?b/a*[1]\\x")),
            b"/d\\?b/a\\*\\[1]\\\\x"
        );
    }
}
