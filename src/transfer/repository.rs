//! A backup into a repository that reads the frozen files itself (restic): the
//! destination's [`Ingest`] is the copy. Each frozen directory is handed over with the
//! original path it stands for, so that the repository records `/var/lib/mysql`, not
//! where the snapshot happened to be mounted.

use std::path::Path;

use async_trait::async_trait;

use super::tree::plan_copy;
use super::{Copied, CopyItem, Finish, Source, Target, Transfer};
use crate::db::Layout;
use crate::destination::Ingest;

pub struct RepositoryTransfer<'a> {
    pub ingest: &'a dyn Ingest,
    /// The backup whose snapshot is the parent, if any (for `describe`).
    pub base: Option<String>,
    pub needed_bytes: u64,
}

#[async_trait]
impl Transfer for RepositoryTransfer<'_> {
    fn describe(&self) -> String {
        match &self.base {
            Some(base) => format!("restic backup, deduplicated against backup {base}"),
            None => "restic backup, the first of this datadir in the repository".into(),
        }
    }

    fn needed_bytes(&self) -> u64 {
        self.needed_bytes
    }

    async fn copy(&self, from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied> {
        let items = at_original_paths(from.layout, from.read_paths)?;
        let stats = self
            .ingest
            .ingest(
                into.partial,
                &from.layout.datadir,
                &items,
                into.journal,
                into.progress,
            )
            .await?;
        Ok(Copied {
            stats,
            stored: Vec::new(),
        })
    }

    async fn finish(&self, done: Finish<'_>) -> anyhow::Result<()> {
        done.release_snapshot_and_parents().await
    }
}

/// The copy plan with each item's `to` the original path it stands for (parents
/// first, runtime files excluded, as for rsync).
fn at_original_paths(
    layout: &Layout,
    read_paths: &[dbsnap_backend_api::ReadPath],
) -> anyhow::Result<Vec<CopyItem>> {
    let root = Path::new("/");
    let files = root.join(crate::manifest::FILES_DIR);
    plan_copy(layout, read_paths, root)?
        .into_iter()
        .map(|item| {
            let relative = item
                .to
                .strip_prefix(&files)
                .expect("plan_copy uses stored_path")
                .to_path_buf();
            Ok(CopyItem {
                to: root.join(relative),
                ..item
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::layout::ServerPaths;
    use dbsnap_backend_api::ReadPath;

    #[test]
    fn a_repository_sees_each_frozen_directory_at_its_original_path() {
        let layout = Layout::from_server(
            "/srv/db/data".into(),
            ServerPaths {
                pid_file: Some("/srv/db/data/db.pid".into()),
                ..Default::default()
            },
        );
        let reads = [ReadPath {
            origin_root: "/srv/db".into(),
            frozen_root: "/srv/.snaps/s.0".into(),
        }];
        let items = at_original_paths(&layout, &reads).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].from, Path::new("/srv/.snaps/s.0/data"));
        assert_eq!(items[0].to, Path::new("/srv/db/data"));
        assert_eq!(items[0].exclude, vec![std::path::PathBuf::from("db.pid")]);
    }
}
