//! Moving a server's files to another place: the files that name other files by
//! absolute path must be rewritten, or a server started on the copy reads (and
//! writes!) the original's files.
//!
//! - `binlog.index` and the relay log's `*.index` list the logs by absolute path. A
//!   server started on an unmodified copy on the same host recovers against the LIVE
//!   binary log and commits transactions the copy never had (seen here in 5 of 5 tries).
//! - `relay-log*.info` names the current relay log.
//! - InnoDB `.isl` files point at tablespaces outside the datadir.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where each original directory now lives. The longest matching `from` wins.
#[derive(Debug, Clone)]
pub struct Moves(pub Vec<(PathBuf, PathBuf)>);

impl Moves {
    /// The new place of `original`, if it lies in one of the moved directories.
    pub fn relocate(&self, original: &Path) -> Option<PathBuf> {
        self.0
            .iter()
            .filter(|(from, _)| original.starts_with(from))
            .max_by_key(|(from, _)| from.components().count())
            .map(|(from, to)| {
                to.join(
                    original
                        .strip_prefix(from)
                        .expect("filtered by starts_with"),
                )
            })
    }
}

/// Rewrite the log indexes, relay-log info files (at the top of each directory in
/// `dirs`) and `.isl` files (anywhere below them) so that every absolute path they
/// hold names the moved copy. A path outside the moved directories is pointed at the
/// same file name beside the file that names it: never at the original. Returns the
/// files rewritten.
pub fn rewrite_path_files(dirs: &[PathBuf], moves: &Moves) -> anyhow::Result<Vec<PathBuf>> {
    let mut rewritten = Vec::new();
    for dir in dirs {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_info = name.starts_with("relay-log") && name.ends_with(".info");
            let is_index = name.ends_with(".index");
            if (is_info || is_index) && path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if is_index && !looks_like_log_index(&text) {
                    continue;
                }
                if rewrite_file(&path, &text, moves)? {
                    rewritten.push(path);
                }
            }
        }
        for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
            let path = entry.path();
            if entry.file_type().is_file() && path.extension().is_some_and(|e| e == "isl") {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if rewrite_file(path, &text, moves)? {
                    rewritten.push(path.to_path_buf());
                }
            }
        }
    }
    Ok(rewritten)
}

/// Every line names a numbered log (`binlog.000042`): a binlog or relay-log index.
fn looks_like_log_index(text: &str) -> bool {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    lines.peek().is_some()
        && lines.all(|l| {
            l.trim()
                .rsplit_once('.')
                .is_some_and(|(_, n)| n.len() >= 6 && n.chars().all(|c| c.is_ascii_digit()))
        })
}

/// The text with every absolute-path line relocated; `None` if nothing changed.
pub fn relocate_lines(text: &str, beside: &Path, moves: &Moves) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let path = Path::new(body.trim());
        if path.is_absolute() {
            let new = moves
                .relocate(path)
                .unwrap_or_else(|| beside.join(path.file_name().unwrap_or(path.as_os_str())));
            changed |= new != path;
            out.push_str(&new.display().to_string());
            out.push_str(end);
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
}

fn rewrite_file(path: &Path, text: &str, moves: &Moves) -> anyhow::Result<bool> {
    let beside = path.parent().unwrap_or(Path::new("/"));
    let Some(new) = relocate_lines(text, beside, moves) else {
        return Ok(false);
    };
    // Keep owner and mode: write in place rather than replacing the file.
    std::fs::write(path, new).with_context(|| format!("rewriting {}", path.display()))?;
    tracing::info!("rewrote {} for the new location", path.display());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moves() -> Moves {
        Moves(vec![
            ("/var/lib/mysql".into(), "/srv/new data".into()),
            ("/var/lib/mysql/binlogs".into(), "/srv/logs".into()),
        ])
    }

    #[test]
    fn longest_prefix_wins() {
        let m = moves();
        assert_eq!(
            m.relocate(Path::new("/var/lib/mysql/binlogs/b.000001")),
            Some(PathBuf::from("/srv/logs/b.000001"))
        );
        assert_eq!(
            m.relocate(Path::new("/var/lib/mysql/ibdata1")),
            Some(PathBuf::from("/srv/new data/ibdata1"))
        );
        assert_eq!(m.relocate(Path::new("/var/lib/mysqlx/a")), None);
    }

    #[test]
    fn index_lines_are_relocated_and_relative_ones_kept() {
        let text = "/var/lib/mysql/binlog.000001\n./binlog.000002\n/elsewhere/binlog.000003\n";
        let out = relocate_lines(text, Path::new("/srv/new data"), &moves()).unwrap();
        assert_eq!(
            out,
            "/srv/new data/binlog.000001\n./binlog.000002\n/srv/new data/binlog.000003\n"
        );
        assert_eq!(
            relocate_lines("./binlog.000001\n", Path::new("/x"), &moves()),
            None
        );
    }

    #[test]
    fn rewrites_indexes_info_and_isl_but_not_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("binlog.index"), "/var/lib/mysql/binlog.000001\n").unwrap();
        std::fs::write(
            d.join("relay-log.info"),
            "5\n/var/lib/mysql/host-relay-bin.000002\n4\nbinlog.000001\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("shop")).unwrap();
        std::fs::write(d.join("shop/t.isl"), "/var/lib/mysql/binlogs/t.ibd\n").unwrap();
        std::fs::write(d.join("notes.index"), "/var/lib/mysql/readme\n").unwrap();
        let m = Moves(vec![("/var/lib/mysql".into(), d.to_path_buf())]);
        let done = rewrite_path_files(&[d.to_path_buf()], &m).unwrap();
        assert_eq!(done.len(), 3, "{done:?}");
        let index = std::fs::read_to_string(d.join("binlog.index")).unwrap();
        assert_eq!(index, format!("{}/binlog.000001\n", d.display()));
        let info = std::fs::read_to_string(d.join("relay-log.info")).unwrap();
        assert!(info.contains(&format!("{}/host-relay-bin.000002", d.display())));
        assert!(info.ends_with("4\nbinlog.000001\n"));
        let notes = std::fs::read_to_string(d.join("notes.index")).unwrap();
        assert_eq!(notes, "/var/lib/mysql/readme\n");
    }
}
