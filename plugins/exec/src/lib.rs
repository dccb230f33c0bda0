//! The exec backend: a snapshot backend implemented by an out-of-tree program.
//!
//! dbsnap runs `dbsnap-backend-NAME VERB`, writes one JSON request to its stdin and
//! reads one JSON response from its stdout, in the spirit of CNI. The protocol is
//! specified in `plugins/README.md`; [`protocol`] holds its wire types. The program is
//! looked up in `[snapshot.exec] plugin_dir` first, then on `PATH`.
//!
//! Everything a plugin can get wrong — missing, not executable, hanging, exiting
//! non-zero, printing garbage or a response of the wrong shape — becomes a
//! [`BackendError`] that names the plugin, the verb and what to do.

mod config;
pub mod protocol;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Instant;

use async_trait::async_trait;
use dbsnap_backend_api::command::{Cmd, CommandError, Output};
use dbsnap_backend_api::{
    validate_name, BackendError, Health, Probe, ReadPath, Result, SnapshotBackend, SnapshotName,
    SnapshotSet, Volume,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use config::{ExecConfig, Timeouts};
use protocol::{code, Verb, WireSet, WireVolume, SUPPORTED_VERSIONS};

/// A plugin called NAME is the program `dbsnap-backend-NAME`.
pub const PROGRAM_PREFIX: &str = "dbsnap-backend-";

/// An exec plugin, as a [`SnapshotBackend`].
pub struct Exec {
    /// `exec:NAME`: what the state journal records, so cleanup reopens the same plugin.
    name: String,
    plugin: PathBuf,
    config: ExecConfig,
    version: tokio::sync::OnceCell<u32>,
}

impl Exec {
    /// The plugin `dbsnap-backend-NAME`, found in `config.plugin_dir` or on `PATH`.
    pub fn new(name: &str, config: ExecConfig) -> Result<Exec> {
        validate_name("exec plugin name", name)?;
        let plugin = locate(name, config.plugin_dir.as_deref())?;
        Ok(Exec {
            name: format!("exec:{name}"),
            plugin,
            config,
            version: tokio::sync::OnceCell::new(),
        })
    }

    /// The program that was found.
    pub fn plugin_path(&self) -> &Path {
        &self.plugin
    }

    /// The protocol version agreed with the plugin (asked once, with `version`).
    pub async fn protocol_version(&self) -> Result<u32> {
        self.version
            .get_or_try_init(|| async {
                let newest = *SUPPORTED_VERSIONS.last().expect("at least one version");
                let response: protocol::VersionResponse = self
                    .exchange(
                        Verb::Version,
                        newest,
                        protocol::VersionRequest {
                            supported_versions: SUPPORTED_VERSIONS,
                        },
                    )
                    .await?;
                protocol::negotiate(&response.supported_versions).ok_or_else(|| {
                    BackendError::Invalid(format!(
                        "exec plugin {} speaks protocol versions {:?} and dbsnap speaks {:?}: \
                         install a version of the plugin made for this dbsnap",
                        self.plugin.display(),
                        response.supported_versions,
                        SUPPORTED_VERSIONS
                    ))
                })
            })
            .await
            .copied()
    }

    async fn call<T: DeserializeOwned>(&self, verb: Verb, body: impl Serialize) -> Result<T> {
        let version = self.protocol_version().await?;
        self.exchange(verb, version, body).await
    }

    /// One run of the plugin: request in, response out, every failure explained.
    async fn exchange<T: DeserializeOwned>(
        &self,
        verb: Verb,
        version: u32,
        body: impl Serialize,
    ) -> Result<T> {
        let request = serde_json::to_vec(&protocol::Request {
            protocol_version: version,
            config: &self.config.options,
            body,
        })
        .map_err(|e| {
            BackendError::Invalid(format!(
                "could not encode the {} request for exec plugin {}: {e}",
                verb.as_str(),
                self.name
            ))
        })?;
        let timeout = self.config.timeouts.for_verb(verb);
        let cmd = Cmd::new(&self.plugin)
            .arg(verb.as_str())
            .stdin(request)
            .timeout(timeout);
        let started = Instant::now();
        let output = cmd.run().await.map_err(|mut e| {
            if started.elapsed() >= timeout {
                e.reason.push_str(&format!(
                    " (the {} limit of {}); if the storage is only slow, raise \
                     [snapshot.exec.timeouts] {}",
                    verb.as_str(),
                    humantime_serde::re::humantime::format_duration(timeout),
                    verb.as_str()
                ));
            }
            BackendError::Command(e)
        })?;
        self.parse(&cmd, verb, &output)
    }

    fn parse<T: DeserializeOwned>(&self, cmd: &Cmd, verb: Verb, output: &Output) -> Result<T> {
        let bad = |reason: String| {
            BackendError::Command(CommandError {
                argv: cmd.display(),
                reason,
                stderr: output.stderr.clone(),
            })
        };
        let text = output.stdout.trim();
        if text.is_empty() {
            return Err(bad(format!(
                "exited 0 but printed no response on stdout; an exec plugin must print one JSON \
                 object for `{}` (see plugins/README.md)",
                verb.as_str()
            )));
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "printed something that is not one JSON object ({e}): {}",
                excerpt(text)
            ))
        })?;
        if value.get("error").is_some() {
            let response: protocol::ErrorResponse = serde_json::from_value(value).map_err(|e| {
                bad(format!(
                    "printed a malformed error response ({e}): {}",
                    excerpt(text)
                ))
            })?;
            return Err(self.plugin_error(cmd, verb, response.error, &output.stderr));
        }
        serde_json::from_value(value).map_err(|e| {
            bad(format!(
                "printed a malformed `{}` response ({e}): {}",
                verb.as_str(),
                excerpt(text)
            ))
        })
    }

    /// An error the plugin reported, as the matching [`BackendError`].
    fn plugin_error(
        &self,
        cmd: &Cmd,
        verb: Verb,
        error: protocol::PluginError,
        stderr: &str,
    ) -> BackendError {
        let protocol::PluginError {
            code,
            message,
            hint,
            path,
        } = error;
        let hinted = if hint.is_empty() {
            message.clone()
        } else {
            format!("{message}. {hint}")
        };
        match code.as_str() {
            code::UNSUPPORTED => BackendError::Unsupported {
                backend: self.name.clone(),
                path: path.unwrap_or_default(),
                reason: message,
                hint,
            },
            code::INVALID_REQUEST => BackendError::Invalid(format!(
                "exec plugin {} refused `{}`: {hinted}",
                self.name,
                verb.as_str()
            )),
            code::UNKNOWN_VERB | code::INCOMPATIBLE_VERSION => BackendError::Invalid(format!(
                "exec plugin {} cannot do `{}` ({code}): {hinted}. Install a version of the \
                 plugin made for this dbsnap",
                self.name,
                verb.as_str()
            )),
            _ => BackendError::Command(CommandError {
                argv: cmd.display(),
                reason: format!("reported an error ({code}): {hinted}"),
                stderr: stderr.to_string(),
            }),
        }
    }

    fn malformed(&self, verb: Verb, what: String) -> BackendError {
        BackendError::Invalid(format!(
            "exec plugin {} returned a malformed `{}` response: {what}",
            self.plugin.display(),
            verb.as_str()
        ))
    }
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// `dbsnap-backend-NAME` in `dir` if it is there, else on `PATH`.
fn locate(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let program = format!("{PROGRAM_PREFIX}{name}");
    if let Some(dir) = dir {
        let candidate = dir.join(&program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(BackendError::Invalid(format!(
                    "exec plugin {} is not an executable file: `chmod +x` it",
                    candidate.display()
                )));
            }
            return Ok(candidate);
        }
    }
    which::which(&program).map_err(|_| {
        let place = match dir {
            Some(dir) => format!("in {} or on PATH", dir.display()),
            None => "on PATH".to_string(),
        };
        BackendError::Invalid(format!(
            "exec plugin {program} (for backend \"exec:{name}\") was not found {place}: install it \
             there or set [snapshot.exec] plugin_dir to the directory that holds it"
        ))
    })
}

fn wire_volumes(volumes: &[Volume]) -> Vec<WireVolume> {
    volumes.iter().map(WireVolume::from).collect()
}

#[async_trait]
impl SnapshotBackend for Exec {
    fn name(&self) -> &str {
        &self.name
    }

    async fn probe(&self, paths: &[PathBuf]) -> Result<Probe> {
        let response: protocol::ProbeResponse = self
            .call(Verb::Probe, protocol::ProbeRequest { paths })
            .await?;
        let volumes: Vec<Volume> = response.volumes.into_iter().map(Volume::from).collect();
        if let Some(path) = paths
            .iter()
            .find(|p| !volumes.iter().any(|v| v.contains(p)))
        {
            return Err(self.malformed(
                Verb::Probe,
                format!("no volume it returned contains {}", path.display()),
            ));
        }
        Ok(Probe {
            atomic: response.atomic.unwrap_or(volumes.len() <= 1),
            volumes,
        })
    }

    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet> {
        let response: protocol::PlanResponse = self
            .call(
                Verb::Plan,
                protocol::PlanRequest {
                    volumes: wire_volumes(volumes),
                    name: name.clone(),
                },
            )
            .await?;
        let set = WireSet {
            name: name.clone(),
            snapshots: response.snapshots,
        }
        .into_set(&self.name);
        if set.snapshots.len() != volumes.len() {
            return Err(self.malformed(
                Verb::Plan,
                format!(
                    "{} snapshots for {} volumes",
                    set.snapshots.len(),
                    volumes.len()
                ),
            ));
        }
        for (i, (snap, volume)) in set.snapshots.iter().zip(volumes).enumerate() {
            if &snap.volume != volume {
                return Err(self.malformed(
                    Verb::Plan,
                    format!(
                        "snapshot {i} is for volume {:?}, not {:?}",
                        snap.volume.id, volume.id
                    ),
                ));
            }
            if snap.id.is_empty() || set.snapshots[..i].iter().any(|s| s.id == snap.id) {
                return Err(self.malformed(
                    Verb::Plan,
                    format!("snapshot {i} has an empty or repeated id {:?}", snap.id),
                ));
            }
        }
        Ok(set)
    }

    async fn snapshot(&self, set: &SnapshotSet) -> Result<()> {
        let _: protocol::Empty = self
            .call(Verb::Snapshot, protocol::SetRequest { set: set.into() })
            .await?;
        Ok(())
    }

    async fn mount(&self, set: &SnapshotSet, workdir: &Path) -> Result<Vec<ReadPath>> {
        let response: protocol::MountResponse = self
            .call(
                Verb::Mount,
                protocol::MountRequest {
                    set: set.into(),
                    workdir,
                },
            )
            .await?;
        let paths: Vec<ReadPath> = response.read_paths.into_iter().map(Into::into).collect();
        if paths.len() != set.snapshots.len() {
            return Err(self.malformed(
                Verb::Mount,
                format!(
                    "{} read paths for {} snapshots",
                    paths.len(),
                    set.snapshots.len()
                ),
            ));
        }
        if let Some(p) = paths.iter().find(|p| !p.frozen_root.is_absolute()) {
            return Err(self.malformed(
                Verb::Mount,
                format!("frozen_root {} is not absolute", p.frozen_root.display()),
            ));
        }
        Ok(paths)
    }

    async fn unmount(&self, set: &SnapshotSet, workdir: &Path) -> Result<()> {
        let _: protocol::Empty = self
            .call(
                Verb::Unmount,
                protocol::MountRequest {
                    set: set.into(),
                    workdir,
                },
            )
            .await?;
        Ok(())
    }

    // No `spread_release`: the protocol has no such request; a plugin's `release` frees
    // its snapshots however its storage does.
    async fn release(&self, set: &SnapshotSet) -> Result<()> {
        let _: protocol::Empty = self
            .call(Verb::Release, protocol::SetRequest { set: set.into() })
            .await?;
        Ok(())
    }

    async fn list(&self, volumes: &[Volume]) -> Result<Vec<SnapshotSet>> {
        let response: protocol::ListResponse = self
            .call(
                Verb::List,
                protocol::VolumesRequest {
                    volumes: wire_volumes(volumes),
                },
            )
            .await?;
        Ok(response
            .sets
            .into_iter()
            .map(|s| s.into_set(&self.name))
            .collect())
    }

    async fn health(&self, set: &SnapshotSet) -> Result<Health> {
        let response: protocol::HealthResponse = self
            .call(Verb::Health, protocol::SetRequest { set: set.into() })
            .await?;
        Ok(response.into())
    }
}
