//! Whether a path stays inside the confined directory once its symlinks are resolved.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// The confined directory, resolved (no symlink in it).
#[derive(Debug, Clone)]
pub struct Root(PathBuf);

/// How far inside the root a path must lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The root itself or anything below it.
    RootOrBelow,
    /// Strictly below the root.
    Below,
}

impl Root {
    pub fn new(dir: &Path) -> Result<Root, String> {
        let real = std::fs::canonicalize(dir).map_err(|e| {
            format!(
                "the confined directory {} cannot be used: {e}",
                dir.display()
            )
        })?;
        if !real.is_dir() {
            return Err(format!(
                "the confined directory {} is not a directory",
                dir.display()
            ));
        }
        Ok(Root(real))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// That the absolute `path` lies inside the root as `depth` asks, after resolving
    /// every symlink along the part of it that exists (what does not exist yet is
    /// created by the command, below what does).
    pub fn check(&self, path: &Path, depth: Depth) -> Result<(), String> {
        let real = resolve(path)?;
        if depth == Depth::Below && real == self.0 {
            return Err(format!(
                "{} is the confined directory itself: only what is below it may change",
                path.display()
            ));
        }
        match real.starts_with(&self.0) {
            true => Ok(()),
            false => Err(format!(
                "{} is outside {}{}",
                path.display(),
                self.0.display(),
                match real.as_path() == path {
                    true => String::new(),
                    false => format!(" (it leads to {})", real.display()),
                }
            )),
        }
    }

    /// [`Root::check`] for `name`, relative to the directory `base`.
    pub fn check_relative(&self, base: &Path, name: &str) -> Result<(), String> {
        let relative = Path::new(name);
        if name.is_empty() || relative.is_absolute() {
            return Err(format!("{name:?} is not a relative path"));
        }
        self.check(&base.join(relative), Depth::Below)
    }
}

/// `path` as it resolves now: the longest part of it that exists, with its symlinks
/// resolved, then the rest as written.
fn resolve(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{} holds `..`", path.display()));
    }
    let mut existing = PathBuf::from("/");
    let mut missing = PathBuf::new();
    for part in path.components().skip(1) {
        if missing.as_os_str().is_empty() {
            let next = existing.join(part);
            match std::fs::symlink_metadata(&next) {
                Ok(_) => {
                    existing = next;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot look at {}: {e}", next.display())),
            }
        }
        missing.push(part);
    }
    // A symlink whose target does not exist fails here: where it leads is unknown.
    let real = std::fs::canonicalize(&existing)
        .map_err(|e| format!("{} leads nowhere known ({e})", existing.display()))?;
    Ok(real.join(missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_pass_and_dot_dot_absolute_elsewhere_and_symlinks_out_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root_dir = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root_dir.join("a")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("out")).unwrap();
        std::os::unix::fs::symlink(root_dir.join("a"), root_dir.join("in")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nothing"), root_dir.join("dangling")).unwrap();
        let root = Root::new(&root_dir).unwrap();

        assert!(root.check(&root_dir, Depth::RootOrBelow).is_ok());
        assert!(root
            .check(&root_dir, Depth::Below)
            .unwrap_err()
            .contains("itself"));
        assert!(root.check(&root_dir.join("a"), Depth::Below).is_ok());
        assert!(root
            .check(&root_dir.join("new/deeper"), Depth::Below)
            .is_ok());
        assert!(root.check(&root_dir.join("in/x"), Depth::Below).is_ok());

        let refused = |path: PathBuf| root.check(&path, Depth::Below).unwrap_err();
        assert!(refused(root_dir.join("a/../../outside")).contains("`..`"));
        assert!(refused(outside.join("x")).contains("is outside"));
        assert!(refused(PathBuf::from("/etc/passwd")).contains("is outside"));
        assert!(refused(root_dir.join("out/x")).contains("leads to"));
        assert!(refused(root_dir.join("out")).contains("leads to"));
        assert!(refused(root_dir.join("dangling/x")).contains("leads nowhere"));
        assert!(refused(PathBuf::from("relative/x")).contains("not an absolute"));
        assert!(root.check_relative(&root_dir.join("a"), "f/g").is_ok());
        assert!(root
            .check_relative(&root_dir.join("a"), "/etc/passwd")
            .is_err());
        assert!(root.check_relative(&root_dir.join("a"), "../../x").is_err());
        assert!(root.check_relative(&root_dir, "out/shadow").is_err());
    }
}
