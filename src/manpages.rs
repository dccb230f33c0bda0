//! Man pages and shell completions, generated from the clap definitions in `cli` so
//! they cannot drift from `--help`: `dbsnap completions SHELL` prints a completion
//! script; `dbsnap man DIR` (hidden; run when the package is built) writes `dbsnap.1`
//! and one page per subcommand (`dbsnap-backup.1`, `dbsnap-snapshot-create.1`, ...).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dbsnap", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("writing the completion script to stdout")
}

/// Write every page into `dir`; returns the files written.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    // Fills in what rendering reads: the version on every page, full usage lines.
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, "dbsnap", dir, &mut written)?;
    Ok(written)
}

/// The subcommands that get a page of their own: the visible ones, without clap's
/// generated `help`.
pub fn documented(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn write_page(
    cmd: &clap::Command,
    page: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(page)
        .section("1")
        .source(format!("dbsnap {}", env!("CARGO_PKG_VERSION")))
        .manual("dbsnap manual")
        .render(&mut text)?;
    let path = dir.join(format!("{page}.1"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in documented(cmd) {
        write_page(sub, &format!("{page}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (nested) subcommand, as the man page name it must have.
    fn page_names(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        out.push(prefix.to_string());
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            page_names(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_subcommand_has_a_man_page() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path()).unwrap();
        let mut expected = Vec::new();
        page_names(&Cli::command(), "dbsnap", &mut expected);
        for name in [
            "dbsnap-backup",
            "dbsnap-status",
            "dbsnap-snapshot-create",
            "dbsnap-completions",
            "dbsnap-init-repo",
        ] {
            assert!(expected.iter().any(|e| e == name), "{name}");
        }
        let mut found: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".1").unwrap().to_string()
            })
            .collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
        let backup = std::fs::read_to_string(dir.path().join("dbsnap-backup.1")).unwrap();
        assert!(backup.contains("max\\-lock\\-ms"), "{backup}");
        assert!(!found.iter().any(|f| f == "dbsnap-man"));
    }

    #[test]
    fn completions_know_the_subcommands() {
        let mut cmd = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "dbsnap", &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("status") && script.contains("--max-age"));
    }
}
