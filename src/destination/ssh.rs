//! A destination directory on another host, reached over ssh: the same layout as
//! [`super::local::LocalDir`] (`DEST/NAME/` with its manifest, `DEST/NAME.partial/`
//! while written or removed), every step one remote command over the run's shared
//! connection ([`crate::ssh::Session`]).
//!
//! Paths in [`Partial::dir`] and [`Backup::path`] are paths *on the remote host*.
//! Each remote command is a fixed POSIX `sh` script whose variable parts are passed as
//! positional arguments (`sh -c SCRIPT sh ARG...`), the whole argv quoted by
//! [`crate::ssh::command_line`]: nothing from a path or a name is ever part of a script.
//!
//! Remote commands used: `sh`, `cat`, `mkdir`, `mktemp`, `mv`, `rm`, `sync`, `df`
//! (coreutils), plus `rsync` and `b3sum` for the copy and its checksums.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Backup, Destination, Entry, Partial, ReceivedCopies, ServerFiles, PARTIAL_SUFFIX};
use crate::config::SshConfig;
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::Manifest;
use crate::manifest::TransferStats;
use crate::ssh::{Session, SshTarget};
use crate::transfer::checksums::{Checksums, CHECKSUMS_FILE};
use crate::transfer::rsync::{self, CopyItem};

/// The commands a backup over ssh needs on the remote host (besides `sh` and coreutils).
pub const NEEDED_COMMANDS: [&str; 2] = ["rsync", "b3sum"];

/// Every directory's name, then `m` and its manifest or `d` and nothing, each field
/// ended by NUL (a manifest is text: it holds no NUL).
const LIST: &str = r#"cd -- "$1" || exit 3
for d in *; do
  [ -d "$d" ] || continue
  printf '%s\0' "$d"
  if [ -f "$d/manifest.toml" ]; then printf 'm\0'; cat -- "$d/manifest.toml"; printf '\0'
  else printf 'd\0\0'; fi
done"#;

/// Exit 3: missing; 4: not a directory; 5: not writable; 6: commands missing (named).
const CHECK: &str = r#"d=$1; shift
[ -e "$d" ] || exit 3
[ -d "$d" ] || exit 4
t=$(mktemp -p "$d" .dbsnap-probe.XXXXXX 2>&1) || { printf '%s' "$t" >&2; exit 5; }
rm -f -- "$t"
missing=
for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
[ -z "$missing" ] || { printf '%s' "$missing" >&2; exit 6; }"#;

/// The manifest (stdin) written durably, the files synced, then one rename.
const PUBLISH: &str = r#"set -e
cat > "$1/manifest.toml.tmp"
sync -- "$1/manifest.toml.tmp"
mv -f -- "$1/manifest.toml.tmp" "$1/manifest.toml"
sync -f -- "$1"
if [ -e "$2" ]; then printf '%s exists already' "$2" >&2; exit 5; fi
mv -T -- "$1" "$2"
sync -- "$3""#;

/// The checksums (stdin) written beside the copy, then recomputed there.
const CHECKSUMS: &str = r#"cat > "$1/checksums" || exit 3
cd -- "$1" || exit 3
b3sum --check --quiet checksums"#;

/// A file's content if it exists (exit 3 if not).
const READ_IF_THERE: &str = r#"[ -f "$1" ] || exit 3
cat -- "$1""#;

/// Delete files (relative to `$1`) of a partial.
const DELETE_FILES: &str = r#"cd -- "$1" || exit 3
shift
rm -f -- "$@""#;

/// Check a stored backup against its checksums (exit 4: it has none).
const CHECK_STORED: &str = r#"cd -- "$1" || exit 3
[ -f checksums ] || exit 4
b3sum --check --quiet checksums"#;

/// The manifest (stdin) replaced durably (a verification verdict recorded).
const REWRITE_MANIFEST: &str = r#"set -e
cat > "$1/manifest.toml.tmp"
sync -- "$1/manifest.toml.tmp"
mv -f -- "$1/manifest.toml.tmp" "$1/manifest.toml"
sync -- "$1""#;

/// Claim a partial by creating it (exit 3: it exists, another run's).
const MAKE_PARTIAL: &str = r#"if [ -e "$1" ]; then exit 3; fi
mkdir -- "$1""#;

/// Make a backup a partial again (one rename), then delete it.
const REMOVE: &str = r#"if [ -e "$1" ]; then mv -T -- "$1" "$2"; fi
rm -rf -- "$2""#;

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

    pub fn session(&self) -> &Session {
        &self.session
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

    /// Run the fixed `script` with `args` as `$1...` on the remote host.
    async fn script(
        &self,
        script: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> anyhow::Result<std::process::Output> {
        let mut argv = vec!["sh", "-c", script, "sh"];
        argv.extend_from_slice(args);
        self.session.output(&argv, stdin).await
    }

    fn on_host(&self, path: &Path) -> String {
        format!("{}:{}", self.target.display_host(), path.display())
    }

    /// That the remote directory exists, is writable, and has `commands`.
    pub async fn check_with(&self, commands: &[&str]) -> anyhow::Result<()> {
        let dir = self.dir().to_string_lossy().into_owned();
        let mut args = vec![dir.as_str()];
        args.extend_from_slice(commands);
        let out = self.script(CHECK, &args, None).await?;
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
                 (apt-get install rsync b3sum)",
                self.target.display_host()
            ),
            _ => format!(
                "checking the destination {at} failed ({}): {said}. If dbsnap's key there has a \
                 forced command (command=\"rrsync ...\" in authorized_keys), it cannot work: \
                 dbsnap runs sh, coreutils, rsync and b3sum there (README: \"Backing up to \
                 another host\")",
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
        let mut partials: Vec<String> = self
            .entries()
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Partial { name: n, .. }
                    if n != partial.name && looks_like_a_backup_name(&n) =>
                {
                    Some(n)
                }
                _ => None,
            })
            .collect();
        let Some(newest) = partials.pop() else {
            return Ok(None);
        };
        for older in partials {
            self.delete_partial(&older, journal).await?;
        }
        let from = self.partial_dir(&newest);
        let (from_s, dir_s) = (from.to_string_lossy(), partial.dir.to_string_lossy());
        // rename(2) replaces an empty directory: the claimed partial stays claimed.
        self.session
            .run(
                &["mv", "-T", "--", &from_s, &dir_s],
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

    /// Store `checksums` in the partial and have the remote host recompute them from
    /// what it stored (`b3sum --check`, one command). Files that differ are deleted
    /// from the partial, so that the next run, resuming it, sends them again.
    pub async fn check_checksums(
        &self,
        partial: &Path,
        checksums: &Checksums,
    ) -> anyhow::Result<()> {
        let dir = partial.to_string_lossy();
        let text = checksums.render();
        let out = self
            .script(CHECKSUMS, &[&dir], Some(text.as_bytes()))
            .await?;
        if out.status.success() {
            return Ok(());
        }
        let failed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.rsplit_once(": FAILED").map(|(name, _)| name))
            .map(|name| match name.strip_prefix('\\') {
                Some(escaped) => crate::transfer::checksums::unescape(escaped),
                None => name.to_string(),
            })
            .collect();
        if failed.is_empty() || out.status.code() == Some(3) {
            return Err(fail(
                Class::Destination,
                format!(
                    "checking the checksums on {} failed ({}): {}",
                    self.target.display_host(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let mut argv: Vec<&str> = vec![&dir];
        argv.extend(failed.iter().map(String::as_str));
        let _ = self.script(DELETE_FILES, &argv, None).await;
        Err(fail(
            Class::Verify,
            format!(
                "the copy on {} differs from the snapshot in {} file(s) ({}): the backup was not \
                 published. Check the backup host's storage; the next run resends those files",
                self.target.display_host(),
                failed.len(),
                failed
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// rsync's view of this host: its `-e` and `user@host`.
    pub async fn rsync_remote(
        &self,
        side: rsync::Side,
        compress: Option<Option<u8>>,
    ) -> anyhow::Result<rsync::Remote> {
        Ok(rsync::Remote {
            shell: self.session.rsync_shell().await?,
            host: self.target.destination(),
            side,
            compress,
        })
    }

    /// Apparent size of the files under `path` there (`du`, for progress).
    pub async fn stored_bytes(&self, path: &Path) -> u64 {
        let p = path.to_string_lossy();
        let out = self.session.run(&["du", "-s", "-b", "--", &p], "du").await;
        out.ok()
            .and_then(|o| o.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    /// Copy the backup at `backup` (there) into the local directory `to`.
    pub async fn pull(
        &self,
        backup: &Path,
        to: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<TransferStats> {
        let remote = self.rsync_remote(rsync::Side::Source, None).await?;
        let item = CopyItem {
            from: backup.to_path_buf(),
            to: to.to_path_buf(),
            exclude: Vec::new(),
        };
        let options = rsync::Options {
            remote: Some(&remote),
            ..rsync::Options::default()
        };
        rsync::copy_with(&[item], options, progress, &|_, _| {}).await
    }

    /// Check the stored backup at `backup` against its checksums, there (`b3sum`, one
    /// command). Returns how many files were checked.
    pub async fn verify_checksums(&self, backup: &Path) -> anyhow::Result<usize> {
        let sums = self.read_checksums(backup).await?.ok_or_else(|| {
            fail(
                Class::Config,
                format!(
                    "the backup {} has no checksums file (it was made by a dbsnap without \
                     them, or by a stream method): use `dbsnap verify` without --checksums",
                    self.on_host(backup)
                ),
            )
        })?;
        let dir = backup.to_string_lossy();
        let out = self.script(CHECK_STORED, &[&dir], None).await?;
        if out.status.success() {
            return Ok(sums.0.len());
        }
        Err(fail(
            Class::Verify,
            format!(
                "the backup {} does not match its checksums: {}{}",
                self.on_host(backup),
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace('\n', "; "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }

    /// Replace the manifest of the backup at `backup` there.
    pub async fn rewrite_manifest(&self, backup: &Path, manifest: &Manifest) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(manifest)?;
        let dir = backup.to_string_lossy();
        let out = self
            .script(REWRITE_MANIFEST, &[&dir], Some(text.as_bytes()))
            .await?;
        if !out.status.success() {
            anyhow::bail!(
                "writing the manifest of {} failed: {}",
                self.on_host(backup),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The checksums stored with the backup at `backup` (remote path), if it has them.
    pub async fn read_checksums(&self, backup: &Path) -> anyhow::Result<Option<Checksums>> {
        let path = backup.join(CHECKSUMS_FILE);
        let path = path.to_string_lossy();
        let out = self.script(READ_IF_THERE, &[&path], None).await?;
        match out.status.code() {
            Some(0) => Checksums::parse(&String::from_utf8_lossy(&out.stdout)).map(Some),
            Some(3) => Ok(None),
            _ => Err(anyhow::anyhow!(
                "reading {} failed: {}",
                self.on_host(backup),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    async fn delete_partial(&self, name: &str, journal: &mut Journal) -> anyhow::Result<()> {
        let dir = self.partial_dir(name);
        let resource = self.resource(dir.clone(), false);
        journal.record(name, resource.clone())?;
        let dir_s = dir.to_string_lossy();
        self.script(REMOVE, &[&dir_s, &dir_s], None).await?;
        journal.forget(&resource)
    }
}

/// What [`Destination::unused_name`] makes: `YYYYMMDDTHHMMSSZ` or `...Z.N`.
fn looks_like_a_backup_name(name: &str) -> bool {
    let (stamp, n) = name.split_once('.').unwrap_or((name, "0"));
    stamp.len() == 16
        && stamp.ends_with('Z')
        && stamp.as_bytes()[8] == b'T'
        && n.chars().all(|c| c.is_ascii_digit())
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

    /// On another host the server's directories cannot contain the destination.
    async fn check(&self, _server: &ServerFiles<'_>) -> anyhow::Result<()> {
        self.check_with(&NEEDED_COMMANDS).await
    }

    async fn free_bytes(&self) -> anyhow::Result<u64> {
        let dir = self.dir().to_string_lossy();
        let out = self
            .session
            .run(&["df", "-P", "-B1", "--", &dir], "df")
            .await?;
        out.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot read the free space of {} from df: {out:?}",
                    self.on_host(self.dir())
                )
            })
    }

    async fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let dir = self.dir().to_string_lossy();
        let out = self.script(LIST, &[&dir], None).await?;
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
            let out = self.script(MAKE_PARTIAL, &[&dir_s], None).await?;
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
            .script(PUBLISH, &[&from, &to, &parent], Some(text.as_bytes()))
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
        for stored in &backup.manifest.stored {
            received
                .delete_received(&backup.manifest.snapshot.backend, &stored.id)
                .await?;
        }
        let (path, partial_s) = (backup.path.to_string_lossy(), partial.to_string_lossy());
        let out = self.script(REMOVE, &[&path, &partial_s], None).await?;
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
        journal.forget(&resource)
    }
}

/// Release a journaled remote partial (`dbsnap cleanup`, or a failed run): one being
/// filled stays for the next run to resume; one being removed is deleted.
pub async fn release(
    dest: &str,
    ssh: &SshConfig,
    dir: &Path,
    resumable: bool,
    state_dir: &Path,
) -> anyhow::Result<()> {
    if resumable {
        tracing::info!(
            "kept the partial backup {dir:?} on {dest}: the next backup resumes from it",
        );
        return Ok(());
    }
    // Only ever delete a directory dbsnap named `*.partial`.
    if !dir.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
        return Ok(());
    }
    let target = SshTarget::parse(dest).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dest = SshDir::new(target, ssh, state_dir);
    let dir_s = dir.to_string_lossy();
    let out = dest.script(REMOVE, &[&dir_s, &dir_s], None).await?;
    if !out.status.success() {
        anyhow::bail!(
            "removing {} failed: {}",
            dest.on_host(dir),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_becomes_backups_partials_and_invalid_entries() {
        let mut manifest = crate::manifest::tests::sample();
        manifest.name = "20261125T000000Z".into();
        let text = toml::to_string_pretty(&manifest).unwrap();
        let mut out = Vec::new();
        for (name, kind, body) in [
            ("20261125T000000Z", "m", text.as_str()),
            ("20261126T000000Z.partial", "d", ""),
            ("broken\nname", "m", "not toml ["),
            ("lost+found", "d", ""),
        ] {
            for field in [name, kind, body] {
                out.extend_from_slice(field.as_bytes());
                out.push(0);
            }
        }
        let entries = parse_listing(Path::new("/srv/b"), &out);
        let names: Vec<&str> = entries.iter().map(Entry::name).collect();
        assert_eq!(
            names,
            vec!["20261125T000000Z", "20261126T000000Z", "broken\nname"]
        );
        assert!(
            matches!(&entries[0], Entry::Backup(b) if b.path == Path::new("/srv/b/20261125T000000Z"))
        );
        assert!(matches!(&entries[1], Entry::Partial { .. }));
        assert!(matches!(&entries[2], Entry::Invalid { .. }));
    }

    #[test]
    fn only_names_dbsnap_makes_are_resumed() {
        assert!(looks_like_a_backup_name("20261125T214500Z"));
        assert!(looks_like_a_backup_name("20261125T214500Z.3"));
        assert!(!looks_like_a_backup_name("mine"));
        assert!(!looks_like_a_backup_name("20261125T214500Z.x"));
    }
}

#[cfg(test)]
pub(crate) mod remote_tests {
    //! Against a real sshd started by the test (root only: sshd needs it).

    use super::*;
    use dbsnap_test_support::sshd::Sshd;

    pub fn open(sshd: &Sshd, dir: &Path, state: &Path) -> SshDir {
        let target = SshTarget::parse(&sshd.url(dir)).unwrap();
        let config = SshConfig {
            identity_file: Some(sshd.identity.clone()),
            known_hosts: Some(sshd.known_hosts.clone()),
            options: vec![],
        };
        SshDir::new(target, &config, state)
    }

    #[tokio::test]
    async fn a_directory_over_ssh_passes_the_destination_conformance_checks() {
        let sshd = Sshd::start();
        let remote = tempfile::tempdir().unwrap();
        let dir = remote.path().join("b; $(touch pwned) 'q'\nz");
        std::fs::create_dir(&dir).unwrap();
        let state = tempfile::tempdir().unwrap();
        let dest = open(&sshd, &dir, state.path());
        super::super::conformance::check(&dest).await;
        assert!(!Path::new("pwned").exists() && !dir.join("pwned").exists());
        assert!(
            dest.free_bytes().await.unwrap() > 0,
            "df over ssh reads the free space"
        );
        assert!(
            sshd.log_text().matches("Accepted publickey").count() == 1,
            "one connection for the whole run: {}",
            sshd.log_text()
        );
    }
}
