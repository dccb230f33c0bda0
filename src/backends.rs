//! The one place that turns a backend name from the configuration into a backend.

use anyhow::Context;
use async_trait::async_trait;
use dbsnap_backend_api::{ReceivingHost, SnapshotBackend};

use crate::config::SnapshotConfig;
use crate::destination::ReceivedCopies;
use crate::error::{fail, Class};

/// The built-in backends, for messages.
pub const BUILT_IN: &[&str] = &["btrfs", "lvm", "zfs"];

pub fn open(config: &SnapshotConfig) -> anyhow::Result<Box<dyn SnapshotBackend>> {
    open_named(&config.backend, config)
}

/// Open the backend called `name` (which may differ from the configured one when
/// cleaning up what an earlier configuration left behind).
pub fn open_named(name: &str, config: &SnapshotConfig) -> anyhow::Result<Box<dyn SnapshotBackend>> {
    match name {
        "btrfs" => Ok(Box::new(dbsnap_btrfs::Btrfs::new(config.btrfs.clone()))),
        "lvm" => Ok(Box::new(dbsnap_lvm::Lvm::new(config.lvm.clone()))),
        "zfs" => Ok(Box::new(dbsnap_zfs::Zfs::new(config.zfs.clone()))),
        other => match other.strip_prefix("exec:") {
            Some(plugin) => {
                let exec = dbsnap_exec::Exec::new(plugin, config.exec.clone())
                    .map_err(|e| fail(Class::Config, format!("[snapshot] backend = {other:?}: {e}")))?;
                Ok(Box::new(exec))
            }
            None => Err(fail(
                Class::Config,
                format!(
                    "unknown snapshot backend {other:?} in [snapshot] backend: choose one of {}, or \
                     exec:NAME for an out-of-tree plugin dbsnap-backend-NAME",
                    BUILT_IN.join(", ")
                ),
            )),
        },
    }
}

/// Opening any backend by the name a journal entry or record gives (which may differ
/// from the configured one when cleaning up what an earlier configuration left). The
/// host opens real backends from the configuration; tests of the flow give fakes.
pub trait Backends: ReceivedCopies {
    fn open_named(&self, name: &str) -> anyhow::Result<Box<dyn SnapshotBackend>>;
}

impl Backends for SnapshotConfig {
    fn open_named(&self, name: &str) -> anyhow::Result<Box<dyn SnapshotBackend>> {
        open_named(name, self)
    }
}

/// Received copies are deleted by the backend that received them, whichever backend
/// is configured now.
#[async_trait]
impl ReceivedCopies for SnapshotConfig {
    async fn delete_received(
        &self,
        backend: &str,
        id: &str,
        host: &dyn ReceivingHost,
    ) -> anyhow::Result<()> {
        delete_received(self, backend, id, host).await
    }
}

/// Delete a received copy on `host` through the backend called `backend`.
pub async fn delete_received(
    backends: &dyn Backends,
    backend: &str,
    id: &str,
    host: &dyn ReceivingHost,
) -> anyhow::Result<()> {
    let backend = backends.open_named(backend)?;
    let stream = backend
        .native_stream()
        .with_context(|| format!("the {} backend cannot delete {id}", backend.name()))?;
    stream.delete_received(host, id).await?;
    Ok(())
}
