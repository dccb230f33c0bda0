//! Do two directories overlap — is one the other, or inside it? Compared by canonical
//! path *and* by device and inode of every ancestor, so that neither a symbolic link
//! nor a bind mount (the same directory under a second path) hides an overlap.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A directory's identity on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// `path` made absolute and free of symbolic links as far as it exists; the missing
/// rest is appended as given (a restore target may not exist yet).
pub fn canonical(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The identities of `path` and of each existing ancestor, nearest first: a directory
/// bind-mounted at one of them is found by its identity, whatever its path.
fn lineage(path: &Path) -> Vec<FileId> {
    let start = canonical(path);
    let existing = start
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let mut ids = Vec::new();
    for ancestor in existing.ancestors() {
        if let Some(id) = FileId::of(ancestor) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// How `target` and `other` overlap, if they do: the same directory, `target` inside
/// `other`, or `other` inside `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    Inside,
    Contains,
}

pub fn overlap(target: &Path, other: &Path) -> Option<Overlap> {
    let (t, o) = (canonical(target), canonical(other));
    if t == o {
        return Some(Overlap::Same);
    }
    if t.starts_with(&o) {
        return Some(Overlap::Inside);
    }
    if o.starts_with(&t) {
        return Some(Overlap::Contains);
    }
    let (t_id, o_id) = (FileId::of(&t), FileId::of(&o));
    if t_id.is_some() && t_id == o_id {
        return Some(Overlap::Same);
    }
    if o_id.is_some_and(|id| lineage(&t).contains(&id)) {
        return Some(Overlap::Inside);
    }
    if t_id.is_some_and(|id| lineage(&o).contains(&id)) {
        return Some(Overlap::Contains);
    }
    None
}

/// Mount points strictly inside `dir`: emptying `dir` would delete through them.
pub fn mounts_inside(dir: &Path) -> Vec<PathBuf> {
    let dir = canonical(dir);
    dbsnap_backend_api::mounts::read_mount_table()
        .map(|table| {
            table
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|m| m.starts_with(&dir) && *m != dir)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_links_do_not_hide_an_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir_all(dest.join("b1")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&dest, &link).unwrap();
        assert_eq!(overlap(&link, &dest), Some(Overlap::Same));
        assert_eq!(overlap(&link.join("b1"), &dest), Some(Overlap::Inside));
        assert_eq!(overlap(&link.join("new"), &dest), Some(Overlap::Inside));
        assert_eq!(overlap(dir.path(), &link), Some(Overlap::Contains));
        assert_eq!(overlap(&dir.path().join("elsewhere"), &dest), None);
    }
}
