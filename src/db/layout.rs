//! Where the server keeps its files, and which directories a backup must therefore
//! snapshot and copy.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A directory the server writes to, and why dbsnap copies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbPath {
    /// `datadir`, `binlog`, `redo log`, `undo`, ...
    pub role: String,
    pub path: PathBuf,
}

/// The raw values the server reported; relative ones are relative to the datadir.
#[derive(Debug, Clone, Default)]
pub struct ServerPaths {
    pub log_bin_basename: Option<String>,
    pub redo: Option<String>,
    pub data_home: Option<String>,
    pub undo: Option<String>,
    pub relay: Option<String>,
    pub aria_log_dir: Option<String>,
    pub socket: Option<String>,
    pub pid_file: Option<String>,
    pub tablespace_files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub datadir: PathBuf,
    /// The binary log's base name (`/var/lib/mysql/binlog`), when binary logging is on.
    pub binlog_basename: Option<PathBuf>,
    /// Every directory holding server files, datadir first.
    pub dirs: Vec<DbPath>,
    /// Files inside the copied directories that must not be copied (socket, pid file).
    pub runtime_files: Vec<PathBuf>,
}

impl Layout {
    pub fn from_server(datadir: PathBuf, raw: ServerPaths) -> Layout {
        let resolve = |value: &str| -> PathBuf {
            let p = Path::new(value);
            normalize(&if p.is_absolute() {
                p.to_path_buf()
            } else {
                datadir.join(p)
            })
        };
        let datadir = normalize(&datadir);
        let mut dirs = vec![DbPath {
            role: "datadir".into(),
            path: datadir.clone(),
        }];
        let mut add = |role: &str, dir: PathBuf| {
            if !dirs.iter().any(|d| d.path == dir) {
                dirs.push(DbPath {
                    role: role.into(),
                    path: dir,
                });
            }
        };
        let nonempty =
            |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let binlog_basename = nonempty(&raw.log_bin_basename).map(|b| resolve(&b));
        if let Some(base) = &binlog_basename {
            add("binlog", parent(base));
        }
        if let Some(redo) = nonempty(&raw.redo) {
            add("redo log", resolve(&redo));
        }
        if let Some(home) = nonempty(&raw.data_home) {
            add("system tablespace", resolve(&home));
        }
        if let Some(undo) = nonempty(&raw.undo) {
            add("undo", resolve(&undo));
        }
        if let Some(relay) = nonempty(&raw.relay) {
            add("relay log", parent(&resolve(&relay)));
        }
        if let Some(aria) = nonempty(&raw.aria_log_dir) {
            add("aria log", resolve(&aria));
        }
        for file in &raw.tablespace_files {
            let path = resolve(file);
            if !path.starts_with(&datadir) {
                add("tablespace", parent(&path));
            }
        }
        let runtime_files = [&raw.socket, &raw.pid_file]
            .into_iter()
            .filter_map(nonempty)
            .map(|f| resolve(&f))
            .collect();
        Layout {
            datadir,
            binlog_basename,
            dirs,
            runtime_files,
        }
    }

    /// The directories to copy: every listed directory that is not inside another one.
    pub fn copy_roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for d in &self.dirs {
            if !self
                .dirs
                .iter()
                .any(|o| o.path != d.path && d.path.starts_with(&o.path))
                && !roots.contains(&d.path)
            {
                roots.push(d.path.clone());
            }
        }
        roots
    }

    /// Replace every path by its canonical form (symlinks resolved), so that it can be
    /// matched against the mount table. A path the server names but that does not
    /// exist is an error naming the server variable's role.
    pub fn canonicalize(&mut self) -> Result<(), String> {
        let canon = |role: &str, p: &Path| {
            p.canonicalize().map_err(|e| {
                format!(
                    "the server's {role} directory {} cannot be read: {e}",
                    p.display()
                )
            })
        };
        for d in &mut self.dirs {
            d.path = canon(&d.role, &d.path)?;
        }
        self.datadir = self.dirs[0].path.clone();
        if let Some(base) = &self.binlog_basename {
            let dir = canon("binlog", &parent(base))?;
            self.binlog_basename = Some(dir.join(base.file_name().unwrap_or_default()));
        }
        Ok(())
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Remove `.` components and trailing slashes (the server reports `./` and `/x/y/`).
fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn default_layout_is_just_the_datadir() {
        let l = Layout::from_server(
            "/var/lib/mysql/".into(),
            ServerPaths {
                log_bin_basename: some("/var/lib/mysql/binlog"),
                redo: some("./"),
                data_home: some(""),
                undo: some("./"),
                socket: some("/run/mysqld/mysqld.sock"),
                pid_file: some("/var/lib/mysql/host.pid"),
                ..Default::default()
            },
        );
        assert_eq!(l.copy_roots(), vec![PathBuf::from("/var/lib/mysql")]);
        assert_eq!(
            l.binlog_basename,
            Some(PathBuf::from("/var/lib/mysql/binlog"))
        );
        assert!(l
            .runtime_files
            .contains(&PathBuf::from("/var/lib/mysql/host.pid")));
    }

    #[test]
    fn separate_binlog_redo_and_tablespace_dirs() {
        let l = Layout::from_server(
            "/srv/db/data".into(),
            ServerPaths {
                log_bin_basename: some("/srv/binlog/mysql-bin"),
                redo: some("/srv/redo/"),
                undo: some("undo"),
                tablespace_files: vec!["./shop/t.ibd".into(), "/srv/fast/big.ibd".into()],
                ..Default::default()
            },
        );
        let roots = l.copy_roots();
        assert_eq!(
            roots,
            vec![
                PathBuf::from("/srv/db/data"),
                PathBuf::from("/srv/binlog"),
                PathBuf::from("/srv/redo"),
                PathBuf::from("/srv/fast"),
            ]
        );
        assert!(l
            .dirs
            .iter()
            .any(|d| d.role == "undo" && d.path == Path::new("/srv/db/data/undo")));
    }

    #[test]
    fn binlog_disabled() {
        let l = Layout::from_server("/d".into(), ServerPaths::default());
        assert_eq!(l.binlog_basename, None);
        assert_eq!(l.copy_roots(), vec![PathBuf::from("/d")]);
    }
}
