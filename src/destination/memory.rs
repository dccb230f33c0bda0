//! A destination in memory, for tests of everything that uses one: the same contract
//! as [`super::local::LocalDir`] (it passes the same conformance checks), no disk.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Backup, Destination, Entry as Listed, Partial, ReceivedCopies, ServerFiles};
use crate::journal::{Journal, Resource};
use crate::manifest::Manifest;

/// Clones share their contents.
#[derive(Clone, Default)]
pub struct MemoryDestination {
    /// By name: `None` while partial, the manifest once published.
    held: Arc<Mutex<BTreeMap<String, Option<Manifest>>>>,
    /// What `free_bytes` reports.
    pub free: u64,
}

const ROOT: &str = "/memory";

fn path_of(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

fn partial_of(name: &str) -> PathBuf {
    Path::new(ROOT).join(format!("{name}.partial"))
}

#[async_trait]
impl Destination for MemoryDestination {
    fn location(&self) -> &Path {
        Path::new(ROOT)
    }

    async fn check(&self, _server: &ServerFiles<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    async fn free_bytes(&self) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.free))
    }

    async fn entries(&self) -> anyhow::Result<Vec<Listed>> {
        let held = self.held.lock().unwrap();
        Ok(held
            .iter()
            .map(|(name, manifest)| match manifest {
                Some(m) => Listed::Backup(Box::new(Backup {
                    name: name.clone(),
                    path: path_of(name),
                    manifest: m.clone(),
                })),
                None => Listed::Partial {
                    name: name.clone(),
                    path: partial_of(name),
                },
            })
            .collect())
    }

    async fn create_partial(
        &self,
        at: DateTime<Utc>,
        journal: &mut Journal,
    ) -> anyhow::Result<Partial> {
        super::claim_first(at, journal, |name, journal| {
            let create = |_: &Path| match self.held.lock().unwrap().entry(name.to_string()) {
                Entry::Occupied(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
                Entry::Vacant(v) => {
                    v.insert(None);
                    Ok(())
                }
            };
            Partial::claim(name, partial_of(name), journal, create)
        })
    }

    async fn publish(
        &self,
        partial: Partial,
        mut manifest: Manifest,
        journal: &mut Journal,
    ) -> anyhow::Result<Backup> {
        manifest.path = path_of(&partial.name);
        self.held
            .lock()
            .unwrap()
            .insert(partial.name.clone(), Some(manifest.clone()));
        journal.forget_published(&partial.dir)?;
        Ok(Backup {
            path: manifest.path.clone(),
            name: partial.name,
            manifest,
        })
    }

    async fn remove(
        &self,
        backup: &Backup,
        journal: &mut Journal,
        received: &dyn ReceivedCopies,
    ) -> anyhow::Result<()> {
        let resource = Resource::Partial {
            dir: partial_of(&backup.name),
        };
        journal.record(&backup.name, resource.clone())?;
        let removed = self.held.lock().unwrap().insert(backup.name.clone(), None);
        if let Some(Some(m)) = removed {
            for s in &m.stored {
                received
                    .delete_received(&m.snapshot.backend, &s.id, &dbsnap_backend_api::LocalHost)
                    .await?;
            }
        }
        self.held.lock().unwrap().remove(&backup.name);
        journal.forget(&resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_destination_passes_the_destination_conformance_checks() {
        super::super::conformance::check(&MemoryDestination::default()).await;
    }
}
