//! `restic backup` of the frozen files, seen at their original paths (see
//! [`super::namespace`]), with its JSON progress read as it is written.

use std::io::Read;
use std::path::PathBuf;

use super::namespace::{self, Bind};
use super::{json, Outputs, Restic, Summary};
use crate::error::Class;

impl Restic {
    /// `restic backup` of `paths` as they look through `binds` (see [`namespace`]),
    /// reporting bytes read to `progress` and restic's pid to `started` as soon as it
    /// runs (again if it has to start again: another process's `forget` or `prune`
    /// held the repository, see [`super::LOCK_WAIT`]).
    pub async fn backup(
        &self,
        request: &BackupRequest<'_>,
        progress: &(dyn Fn(u64) + Sync),
        started: &mut (dyn FnMut(u32) -> anyhow::Result<()> + Send),
    ) -> anyhow::Result<Summary> {
        let mut waiting = self.lock_waiting("restic backup");
        loop {
            let (stderr, status) = match self.backup_once(request, progress, started).await? {
                Ok(summary) => return Ok(summary),
                Err(failed) => failed,
            };
            if !waiting.may_retry(&stderr).await {
                return Err(self.failure(&stderr, "restic backup", Class::Transfer, status));
            }
        }
    }

    /// One `restic backup`: its summary, or what it said and how it exited.
    async fn backup_once(
        &self,
        request: &BackupRequest<'_>,
        progress: &(dyn Fn(u64) + Sync),
        started: &mut (dyn FnMut(u32) -> anyhow::Result<()> + Send),
    ) -> anyhow::Result<Result<Summary, (String, std::process::ExitStatus)>> {
        // No --one-file-system: a volume nested in a server directory (a ZFS child
        // dataset for the binlogs) is a bind of its own below a saved path, on another
        // device. Nothing else is mounted there: the binds are not recursive, so the
        // live tree's own submounts stay hidden under them.
        let mut args: Vec<String> = ["backup", "--json", "--host", request.host]
            .map(String::from)
            .to_vec();
        for tag in request.tags {
            args.extend(["--tag".into(), tag.clone()]);
        }
        if let Some(parent) = request.parent {
            // restic skips a file whose size, times and inode match the parent's; a page
            // written within the same clock tick as the parent's snapshot changes none
            // of them (timestamps are coarse), so every file is read again (`--force`).
            // Unchanged chunks are still deduplicated: the repository grows only by what
            // changed, the read costs what a full read does.
            args.extend(["--parent".into(), parent.to_string(), "--force".into()]);
        }
        if let Some(kib) = request.limit_upload_kib {
            args.push(format!("--limit-upload={kib}"));
        }
        for exclude in request.excludes {
            args.push(format!("--exclude={}", super::literal_pattern(exclude)));
        }
        args.push("--".into());
        args.extend(
            request
                .binds
                .iter()
                .filter(|b| b.top_level)
                .map(|b| b.original.display().to_string()),
        );
        tracing::debug!(?args, "restic");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = self.command(&argv);
        namespace::bind_before_exec(&mut command, request.binds)?;
        let outputs = Outputs::attach(&mut command)?;
        let mut child = command.spawn().map_err(|e| self.not_started(e))?;
        started(child.id().unwrap_or_default())?;
        let mut reader = outputs.out.reopen()?;
        let mut pending = String::new();
        let mut summary = None;
        let mut errors = Vec::new();
        let mut on_line = |line: &str| match json::backup_message(line) {
            json::Message::Status { bytes_done } => progress(bytes_done),
            json::Message::Summary(s) => summary = Some(s),
            json::Message::Error(e) => errors.push(e),
            json::Message::Other => {}
        };
        let status = loop {
            tokio::select! {
                status = child.wait() => break status?,
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                    read_lines(&mut reader, &mut pending, &mut on_line)?;
                }
            }
        };
        read_lines(&mut reader, &mut pending, &mut on_line)?;
        on_line(&pending);
        let err = [outputs.stderr()?, errors.join("\n")].join("\n");
        Ok(match summary {
            // Exit 3: some files could not be read. A backup missing files is no backup.
            Some(summary) if status.success() => Ok(summary),
            _ => Err((err, status)),
        })
    }
}

/// Hand each complete line written to `file` since the last call to `on_line`;
/// an incomplete last line waits in `pending`.
fn read_lines(
    file: &mut std::fs::File,
    pending: &mut String,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    pending.push_str(&String::from_utf8_lossy(&bytes));
    if let Some(end) = pending.rfind('\n') {
        let complete: String = pending.drain(..=end).collect();
        complete.lines().for_each(&mut *on_line);
    }
    Ok(())
}

/// What `restic backup` saves.
pub struct BackupRequest<'a> {
    /// Frozen directories shown at their original paths; the top-level ones are saved.
    pub binds: &'a [Bind],
    /// Original paths left out (the server's pid file).
    pub excludes: &'a [PathBuf],
    pub host: &'a str,
    pub tags: &'a [String],
    /// The previous snapshot of the same directories: unchanged files are not read.
    pub parent: Option<&'a str>,
    /// `--limit-upload`, KiB/s.
    pub limit_upload_kib: Option<u64>,
}
