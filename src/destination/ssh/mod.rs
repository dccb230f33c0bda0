//! A destination directory on another host, reached over ssh: the same layout as
//! [`super::local::LocalDir`] (`DEST/NAME/` with its manifest, `DEST/NAME.partial/`
//! while written or removed), every step one remote command over the run's shared
//! connection ([`crate::ssh::Session`]).
//!
//! Paths in [`Partial::dir`] and [`Backup::path`] are paths *on the remote host*.
//! Each remote command is a fixed POSIX `sh` script whose variable parts are passed as
//! positional arguments (`sh -c SCRIPT sh ARG...`), the whole argv quoted by
//! [`crate::ssh::session::command_line`]: nothing from a path or a name is ever part of a script.
//!
//! Remote commands used: `sh`, `cat`, `mkdir`, `mktemp`, `mv`, `rm`, `sync`, `df`,
//! `du`, `cp` (coreutils), plus `rsync` and `b3sum` for the copy and its checksums.
//! Every one of them is a [`commands::RemoteCommand`] (the fixed scripts are in
//! [`scripts`]), which is also what a key confined by [`confine`] (`dbsnap
//! ssh-confine` as its forced command) allows; what is done to a stored copy's files
//! (checksums, pulls) is in `stored.rs`.
//!
//! A native stream is received here too: the destination is the stream's
//! [`ReceivingHost`], so the backend's own receive and delete commands (`btrfs
//! receive`, `zfs receive`, `btrfs subvolume delete`, `zfs destroy`, `stat`,
//! `realpath`, `cat /proc/self/mountinfo`) run there as argv vectors, each turned into
//! one quoted remote line by [`crate::ssh::session::command_line`] under `env LC_ALL=C`.
//! They are not [`commands::RemoteCommand`]s: a key confined by `dbsnap ssh-confine`
//! refuses them, so streams need a key restricted by `restrict,from=` only.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dbsnap_backend_api::command::{Cmd, CommandError};
use dbsnap_backend_api::ReceivingHost;

use super::{Backup, Destination, Entry, Partial, ReceivedCopies, ServerFiles, PARTIAL_SUFFIX};
use crate::config::SshConfig;
use crate::error::{fail, Class};
use crate::journal::{Journal, RemoteDest, Resource};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::ssh::{Session, SshTarget};

/// The commands a backup over ssh needs on the remote host (besides `sh` and coreutils).
pub const NEEDED_COMMANDS: [&str; 2] = ["rsync", "b3sum"];

pub mod commands;
pub mod confine;
mod scripts;
mod stored;
#[cfg(test)]
mod tests;

use commands::*;

pub struct SshDir {
    target: SshTarget,
    /// `[backup] dest` as configured (the URL), for messages and records.
    location: PathBuf,
    ssh: SshConfig,
    session: Session,
}

impl SshDir {
    pub fn new(target: SshTarget, ssh: &SshConfig, state_dir: &Path) -> SshDir {
        SshDir {
            location: PathBuf::from(target.url()),
            session: Session::new(target.clone(), ssh, state_dir),
            ssh: ssh.clone(),
            target,
        }
    }

    /// The destination a journal entry names (`[backup] dest` and `[backup.ssh]` as
    /// they were), opened again by `cleanup`.
    pub fn reopen(remote: &RemoteDest, state_dir: &Path) -> anyhow::Result<SshDir> {
        let target = SshTarget::parse(&remote.dest).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(SshDir::new(target, &remote.ssh, state_dir))
    }

    /// How the journal names this destination.
    pub fn journaled(&self) -> RemoteDest {
        RemoteDest {
            dest: self.target.url(),
            ssh: self.ssh.clone(),
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether `dir` is a `NAME.partial` directory directly in this destination.
    pub fn is_partial_dir(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.dir())
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(PARTIAL_SUFFIX))
    }

    /// A native stream is about to be received into `partial`: what it receives cannot
    /// be resumed, so the partial is journaled as one to delete, not to keep for the next
    /// run (recorded before the old entry is forgotten: it is never unjournaled).
    pub fn receive_into(&self, partial: &Partial, journal: &mut Journal) -> anyhow::Result<()> {
        journal.record(&partial.name, self.resource(partial.dir.clone(), false))?;
        journal.forget(&self.resource(partial.dir.clone(), true))
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn dir(&self) -> &Path {
        &self.target.path
    }

    fn partial_dir(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}{PARTIAL_SUFFIX}"))
    }

    fn resource(&self, dir: PathBuf, resumable: bool) -> Resource {
        Resource::RemotePartial {
            dest: self.target.url(),
            ssh: self.ssh.clone(),
            dir,
            resumable,
        }
    }

    /// Run `command` with `args` on the remote host.
    async fn call(
        &self,
        command: &RemoteCommand,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> anyhow::Result<std::process::Output> {
        self.session.output(&command.argv(args), stdin).await
    }

    fn on_host(&self, path: &Path) -> String {
        format!("{}:{}", self.target.display_host(), path.display())
    }

    /// That the remote directory exists, is writable, and has `commands`.
    pub async fn check_with(&self, commands: &[&str]) -> anyhow::Result<()> {
        let dir = self.dir().to_string_lossy().into_owned();
        let mut args = vec![dir.as_str()];
        args.extend_from_slice(commands);
        let out = self.call(&CHECK, &args, None).await?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let at = self.on_host(self.dir());
        let problem = match out.status.code() {
            Some(0) => return Ok(()),
            Some(3) => format!(
                "the destination {at} does not exist: create it there (mkdir -p) or fix [backup] dest"
            ),
            Some(4) => format!("the destination {at} is not a directory: fix [backup] dest"),
            Some(5) => format!(
                "the destination {at} is not writable by the ssh user ({said}): fix its permissions \
                 or mount it read-write"
            ),
            Some(6) => format!(
                "the backup host {} lacks{said}, which a backup there needs: install it there \
                 (apt-get install rsync b3sum; btrfs-progs for btrfs-send, zfsutils-linux for \
                 zfs-send)",
                self.target.display_host()
            ),
            _ => format!(
                "checking the destination {at} failed ({}): {said}. If dbsnap's key there has a \
                 forced command in authorized_keys, it must be `dbsnap ssh-confine --root DIR` \
                 with DIR holding the destination, and only file-tree copies work through it \
                 (rrsync cannot work: dbsnap runs sh, coreutils, rsync and b3sum there, and \
                 btrfs or zfs for a stream; README: \"Backing up to another host\")",
                out.status
            ),
        };
        Err(fail(Class::Destination, problem))
    }

    /// Move the newest partial an interrupted run left into the freshly claimed (empty)
    /// `partial`, in one rename over it; older leftover partials are removed. Returns
    /// the name of the run it continues.
    async fn take_partial(
        &self,
        partial: &Partial,
        journal: &mut Journal,
    ) -> anyhow::Result<Option<String>> {
        let left: Vec<String> = self
            .entries()
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Partial { name: n, .. } => Some(n),
                _ => None,
            })
            .collect();
        let (Some(newest), older) = super::partial_to_resume(left, &partial.name) else {
            return Ok(None);
        };
        for older in older {
            self.delete_partial(&older, journal).await?;
        }
        let from = self.partial_dir(&newest);
        let (from_s, dir_s) = (from.to_string_lossy(), partial.dir.to_string_lossy());
        // rename(2) replaces an empty directory: the claimed partial stays claimed.
        self.session
            .run(
                &RENAME.argv(&[&from_s, &dir_s]),
                &format!("taking over the partial {newest}"),
            )
            .await?;
        // The old run's entry (if this state directory made it) names a dir gone now.
        let old = self.resource(from, true);
        if journal.entries().iter().any(|e| e.resource == old) {
            journal.forget(&old)?;
        }
        Ok(Some(newest))
    }

    /// Delete the partial `dir` with the received copies its manifest names (a removal
    /// of a stream's backup; a receive interrupted before the manifest was written has
    /// its own journal entry, released before the partial).
    async fn delete_partial_dir(
        &self,
        dir: &Path,
        received: &(impl ReceivedCopies + ?Sized),
    ) -> anyhow::Result<()> {
        let manifest = dir.join(MANIFEST_FILE);
        let out = self
            .call(&READ_IF_THERE, &[&manifest.to_string_lossy()], None)
            .await?;
        if out.status.success() {
            if let Ok(manifest) = toml::from_str::<Manifest>(&String::from_utf8_lossy(&out.stdout))
            {
                for stored in &manifest.stored {
                    received
                        .delete_received(&manifest.snapshot.backend, &stored.id, self)
                        .await?;
                }
            }
        }
        let dir_s = dir.to_string_lossy();
        let out = self.call(&REMOVE, &[&dir_s, &dir_s], None).await?;
        if !out.status.success() {
            return Err(fail(
                Class::Destination,
                format!(
                    "removing {} failed: {}",
                    self.on_host(dir),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    async fn delete_partial(&self, name: &str, journal: &mut Journal) -> anyhow::Result<()> {
        let dir = self.partial_dir(name);
        let resource = self.resource(dir.clone(), false);
        journal.record(name, resource.clone())?;
        let dir_s = dir.to_string_lossy();
        self.call(&REMOVE, &[&dir_s, &dir_s], None).await?;
        journal.forget(&resource)
    }
}

/// The words of `cmd` as the backup host runs it: `env LC_ALL=C [NAME=VALUE...] PROGRAM
/// ARG...` (the C locale, as for every command dbsnap runs, so its output parses).
fn remote_words(cmd: &Cmd) -> Vec<String> {
    let mut words = vec!["env".to_string(), "LC_ALL=C".to_string()];
    words.extend(
        cmd.envs()
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())),
    );
    words.extend(cmd.argv().iter().map(|a| a.to_string_lossy().into_owned()));
    words
}

/// Parse [`LIST`]'s output into entries.
fn parse_listing(dir: &Path, out: &[u8]) -> Vec<Entry> {
    let mut fields = out.split(|b| *b == 0);
    let mut entries = Vec::new();
    while let (Some(name), Some(kind), Some(text)) = (fields.next(), fields.next(), fields.next()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let manifest = (kind == b"m").then(|| {
            let text = String::from_utf8_lossy(text);
            toml::from_str::<Manifest>(&text).map_err(anyhow::Error::from)
        });
        if let Some(entry) = super::classify(name.clone(), dir.join(&name), manifest) {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a.name().cmp(b.name()));
    entries
}

#[async_trait]
impl Destination for SshDir {
    fn location(&self) -> &Path {
        &self.location
    }

    fn remote(&self) -> Option<&SshDir> {
        Some(self)
    }

    async fn holds(&self, path: &Path) -> anyhow::Result<bool> {
        let out = self.call(&EXISTS, &[&path.to_string_lossy()], None).await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(anyhow::anyhow!(
                "cannot tell whether {} exists: {}",
                self.on_host(path),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// On another host the server's directories cannot contain the destination.
    async fn check(&self, _server: &ServerFiles<'_>) -> anyhow::Result<()> {
        self.check_with(&NEEDED_COMMANDS).await
    }

    async fn free_bytes(&self) -> anyhow::Result<Option<u64>> {
        let dir = self.dir().to_string_lossy();
        let out = self.session.run(&FREE_SPACE.argv(&[&dir]), "df").await?;
        // One column only: a filesystem's name may hold spaces (a ZFS dataset's does).
        let free = out
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot read the free space of {} from df: {out:?}",
                    self.on_host(self.dir())
                )
            });
        free.map(Some)
    }

    async fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let dir = self.dir().to_string_lossy();
        let out = self.call(&LIST, &[&dir], None).await?;
        if !out.status.success() {
            return Err(fail(
                Class::Destination,
                format!(
                    "cannot read the destination {}: {}",
                    self.on_host(self.dir()),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(parse_listing(self.dir(), &out.stdout))
    }

    async fn resume_partial(
        &self,
        partial: &Partial,
        journal: &mut Journal,
    ) -> anyhow::Result<Option<String>> {
        self.take_partial(partial, journal).await
    }

    async fn create_partial(
        &self,
        at: DateTime<Utc>,
        journal: &mut Journal,
    ) -> anyhow::Result<Partial> {
        let taken: Vec<String> = self
            .entries()
            .await?
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        for name in super::names_for(at).filter(|n| !taken.contains(n)) {
            let dir = self.partial_dir(&name);
            let resource = self.resource(dir.clone(), true);
            journal.record(&name, resource.clone())?;
            let dir_s = dir.to_string_lossy();
            // `mkdir` fails on an existing directory: that is what claims the name.
            let out = self.call(&MAKE_PARTIAL, &[&dir_s], None).await?;
            match out.status.code() {
                Some(0) => return Ok(Partial { name, dir }),
                Some(3) => journal.forget(&resource)?,
                _ => {
                    journal.forget(&resource)?;
                    return Err(fail(
                        Class::Destination,
                        format!(
                            "creating the partial directory {} failed: {}",
                            self.on_host(&dir),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ));
                }
            }
        }
        unreachable!("names_for never ends")
    }

    async fn publish(
        &self,
        partial: Partial,
        mut manifest: Manifest,
        journal: &mut Journal,
    ) -> anyhow::Result<Backup> {
        let path = self.dir().join(&partial.name);
        manifest.path = path.clone();
        let text = toml::to_string_pretty(&manifest)?;
        let (from, to, parent) = (
            partial.dir.to_string_lossy(),
            path.to_string_lossy(),
            self.dir().to_string_lossy(),
        );
        let out = self
            .call(&PUBLISH, &[&from, &to, &parent], Some(text.as_bytes()))
            .await?;
        if !out.status.success() {
            return Err(fail(
                Class::Destination,
                format!(
                    "publishing the backup {} failed: {}",
                    self.on_host(&path),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        journal.forget_published(&partial.dir)?;
        Ok(Backup {
            name: partial.name,
            path,
            manifest,
        })
    }

    async fn remove(
        &self,
        backup: &Backup,
        journal: &mut Journal,
        received: &dyn ReceivedCopies,
    ) -> anyhow::Result<()> {
        let partial = self.partial_dir(&backup.name);
        let resource = self.resource(partial.clone(), false);
        journal.record(&backup.name, resource.clone())?;
        let (path, partial_s) = (backup.path.to_string_lossy(), partial.to_string_lossy());
        // From this rename on it is no longer a backup; its received copies' ids name
        // them inside the partial (where they were received).
        let out = self
            .call(&MAKE_PARTIAL_AGAIN, &[&path, &partial_s], None)
            .await?;
        if !out.status.success() {
            return Err(fail(
                Class::Destination,
                format!(
                    "removing the backup {} failed: {}",
                    self.on_host(&backup.path),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        self.delete_partial_dir(&partial, received).await?;
        journal.forget(&resource)
    }
}

#[async_trait]
impl ReceivingHost for SshDir {
    /// `ssh ... HOST 'env LC_ALL=C PROGRAM ARG...'` over the run's connection.
    async fn command(&self, cmd: &Cmd) -> Result<Cmd, CommandError> {
        let argv = remote_words(cmd);
        let shown = format!("{} (on {})", cmd.display(), self.target.display_host());
        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
        let ssh = self
            .session
            .remote_argv(&words)
            .await
            .map_err(|e| CommandError {
                argv: shown.clone(),
                reason: format!("could not be run: {e:#}"),
                stderr: String::new(),
            })?;
        Ok(cmd.replaced_by(ssh.into_iter().map(OsString::from).collect(), shown))
    }
}

/// Release a journaled remote partial (`dbsnap cleanup`, or a failed run): one being
/// filled by rsync stays for the next run to resume; one being removed, or one a
/// stream was received into, is deleted with the received copies its manifest names.
pub async fn release(
    remote: &RemoteDest,
    dir: &Path,
    resumable: bool,
    state_dir: &Path,
    received: &(impl ReceivedCopies + ?Sized),
) -> anyhow::Result<()> {
    if resumable {
        tracing::info!(
            "kept the partial backup {dir:?} on {}: the next backup resumes from it",
            remote.dest
        );
        return Ok(());
    }
    // Only ever delete a directory dbsnap named `*.partial`.
    if !dir.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
        return Ok(());
    }
    SshDir::reopen(remote, state_dir)?
        .delete_partial_dir(dir, received)
        .await
}
