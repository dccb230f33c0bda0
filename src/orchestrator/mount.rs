//! Phase 5, `mount`: make the snapshot readable (journaled first), and for `snapshot
//! create --mount`, lay the server's directories out under the user's directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dbsnap_backend_api::{ReadPath, SnapshotBackend};

use super::freeze::Frozen;
use super::plan::Plan;
use crate::error::backend_error;
use crate::journal::{Journal, Resource};
use crate::kept::{Bind, KeptMount};

/// The snapshot, readable.
pub struct Mounted {
    pub frozen: Frozen,
    /// The directory the backend mounted under (`state_dir/runs/RUN`).
    pub workdir: PathBuf,
    /// Where each volume's frozen contents can be read.
    pub read_paths: Vec<ReadPath>,
}

impl Mounted {
    /// The resource this phase journaled.
    pub fn resource(&self) -> Resource {
        Resource::Mount {
            set: self.frozen.set.clone(),
            workdir: self.workdir.clone(),
        }
    }
}

pub async fn mount(
    plan: &Plan,
    frozen: Frozen,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
) -> anyhow::Result<Mounted> {
    let workdir = plan.state_dir.join("runs").join(&frozen.run);
    journal.record(
        &frozen.run,
        Resource::Mount {
            set: frozen.set.clone(),
            workdir: workdir.clone(),
        },
    )?;
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let read_paths = backend
        .mount(&frozen.set, &workdir)
        .await
        .map_err(backend_error)?;
    Ok(Mounted {
        frozen,
        workdir,
        read_paths,
    })
}

/// Where the frozen datadir can be read (`DBSNAP_SNAPSHOT_PATH`).
pub fn frozen_datadir(mounted: &Mounted) -> anyhow::Result<PathBuf> {
    crate::transfer::tree::frozen_path(&mounted.read_paths, &mounted.frozen.layout.datadir)
}

/// `snapshot create --mount DIR`: the backup's copy plan, laid out under `dir` instead
/// of a backup directory, as bind mounts to make once the snapshot is recorded.
pub fn expose(mounted: &Mounted, dir: &Path) -> anyhow::Result<KeptMount> {
    let files = dir.join(crate::manifest::FILES_DIR);
    let binds = crate::transfer::tree::plan_copy(&mounted.frozen.layout, &mounted.read_paths, dir)?
        .into_iter()
        .map(|item| {
            let relative = item
                .to
                .strip_prefix(&files)
                .expect("plan_copy uses stored_path");
            Bind {
                path: Path::new("/").join(relative),
                from: item.from,
                at: dir.join(relative),
            }
        })
        .collect();
    Ok(KeptMount {
        dir: dir.to_path_buf(),
        workdir: mounted.workdir.clone(),
        binds,
    })
}
