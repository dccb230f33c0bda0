//! The allow-list against the commands dbsnap builds, and against hostile ones.

use super::super::commands::*;
use super::super::scripts::{LIST_SH, MAKE_PARTIAL_SH, REMOVE_SH};
use super::*;
use crate::ssh::session::command_line;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: Root,
    dir: String,
}

/// A confined directory holding a backup, and a symlink that leads out of it.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups; $(touch pwned) 'q'\nz");
    std::fs::create_dir_all(dir.join("20261201T000000Z/files")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
    let dir = std::fs::canonicalize(&dir).unwrap().display().to_string();
    Fixture {
        root: Root::new(Path::new(&dir)).unwrap(),
        dir,
        _tmp: tmp,
    }
}

/// What sshd hands the forced command for `argv` sent by dbsnap, split again.
fn as_received(argv: &[&str]) -> Vec<String> {
    shlex::split(&command_line(argv)).expect("a line dbsnap quoted splits")
}

#[test]
fn every_command_dbsnap_builds_is_allowed_with_paths_inside_the_root() {
    let f = fixture();
    let backup = format!("{}/20261201T000000Z", f.dir);
    let partial = format!("{}/20261202T000000Z.partial", f.dir);
    for command in ALL {
        let mut values: Vec<&str> = command
            .args
            .iter()
            .enumerate()
            .map(|(i, kind)| match (kind, i) {
                (Arg::Dir, _) => f.dir.as_str(),
                (Arg::Below, 0) => partial.as_str(),
                (Arg::Below, _) => backup.as_str(),
                (Arg::Relative, _) => "files/ibdata1",
                (Arg::Program, _) => "rsync",
            })
            .collect();
        match command.more {
            Some(Arg::Program) => values.extend(["rsync", "b3sum"]),
            Some(Arg::Relative) => values.extend(["files/a b", "files/it's\nodd"]),
            Some(other) => panic!("no sample for {other:?}"),
            None => {}
        }
        let words = as_received(&command.argv(&values));
        assert_eq!(words, command.argv(&values), "{}", command.what);
        let found = allowed(&words, &f.root).unwrap_or_else(|e| panic!("{}: {e}", command.what));
        assert!(std::ptr::eq(found, command), "{}", command.what);
    }
}

#[test]
fn other_programs_other_scripts_and_paths_outside_are_refused() {
    let f = fixture();
    let inside = format!("{}/20261201T000000Z", f.dir);
    let hostile: Vec<(Vec<String>, &str)> = vec![
        (as_received(&["id"]), "not a command dbsnap runs"),
        (
            as_received(&["sh", "-c", "touch /tmp/canary", "sh"]),
            "not one of dbsnap's",
        ),
        (
            as_received(&["sh", "-c", &format!("{LIST_SH}; touch x"), "sh"]),
            "not one of dbsnap's",
        ),
        (
            as_received(&["df", "-h", "--", &f.dir]),
            "with these options",
        ),
        (as_received(&["rm", "-rf", "--", &f.dir]), "itself"),
        (as_received(&["rm", "-rf", "--", "/"]), "is outside"),
        (
            as_received(&["mv", "-T", "--", &inside, "/tmp/stolen"]),
            "is outside",
        ),
        (
            as_received(&["cp", "-a", "--reflink=always", "--", "/etc", &inside]),
            "is outside",
        ),
        (
            as_received(&REFLINK_TREE.argv(&[&format!("{}/../x", f.dir), &inside])),
            "`..`",
        ),
        (
            as_received(&LIST.argv(&[&format!("{}/etc", f.dir)])),
            "leads to",
        ),
        (
            as_received(&READ_IF_THERE.argv(&[&format!("{}/etc/shadow", f.dir)])),
            "leads to",
        ),
        (
            as_received(&CHECK.argv(&[&f.dir, "$(touch canary)"])),
            "not a program name",
        ),
        (
            as_received(&DELETE_FILES.argv(&[&inside, "../../etc/passwd"])),
            "`..`",
        ),
        (
            as_received(&DELETE_FILES.argv(&[&inside, "/etc/passwd"])),
            "not a relative path",
        ),
        (
            as_received(&["sh", "-c", MAKE_PARTIAL_SH, "sh", &inside, "extra"]),
            "arguments",
        ),
        (
            as_received(&["sh", "-c", REMOVE_SH, "sh", &inside]),
            "arguments",
        ),
    ];
    for (words, why) in hostile {
        let err = allowed(&words, &f.root).map(|c| c.what).unwrap_err();
        assert!(err.contains(why), "{words:?}: {err}");
    }
}

#[test]
fn a_checksums_list_passes_only_with_every_path_inside() {
    let f = fixture();
    let base = Path::new(&f.dir).join("20261201T000000Z");
    let hash = "a".repeat(64);
    let good = format!("{hash}  files/ibdata1\n\\{hash}  files/new\\nline\n");
    let passed = checked_checksums(&good, &base, &f.root).unwrap();
    assert_eq!(
        Checksums::parse(&passed).unwrap(),
        Checksums::parse(&good).unwrap()
    );
    for (text, why) in [
        (format!("{hash}  ../../../etc/shadow\n"), "`..`"),
        (format!("{hash}  /etc/shadow\n"), "not a relative path"),
        (format!("{hash}  ../etc/shadow\n"), "`..`"),
        ("00  files/ibdata1\n".to_string(), "not a BLAKE3"),
        ("no separator\n".to_string(), "HASH  PATH"),
    ] {
        let err = checked_checksums(&text, &base, &f.root).unwrap_err();
        assert!(err.contains(why), "{text:?}: {err}");
    }
    let through_symlink = format!("{hash}  etc/passwd\n");
    assert!(checked_checksums(&through_symlink, Path::new(&f.dir), &f.root).is_err());
}

#[test]
fn the_readme_table_names_every_program_the_confined_key_allows() {
    let readme = include_str!("../../../../README.md");
    for command in ALL.iter().filter(|c| c.words[0] != "sh") {
        let words = command.words.join(" ");
        assert!(readme.contains(&words), "README lacks `{words}`");
    }
    let scripts = [
        "LIST",
        "CHECK",
        "MAKE_PARTIAL",
        "PUBLISH",
        "STORE_CHECKSUMS",
        "CHECK_CHECKSUMS",
        "DELETE_FILES",
        "READ_IF_THERE",
        "REWRITE_MANIFEST",
        "REMOVE",
        "MAKE_PARTIAL_AGAIN",
        "EXISTS",
    ];
    // A new script must be named here and in the README's table.
    let sh = ALL.iter().filter(|c| c.words[0] == "sh").count();
    assert_eq!(scripts.len(), sh);
    for script in scripts {
        assert!(readme.contains(&format!("`sh -c {script}`")), "{script}");
    }
}
