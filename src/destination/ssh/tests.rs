//! The ssh destination's tests: its parsers, and the conformance check against a real
//! sshd.

mod unit {
    use super::super::*;

    #[test]
    fn a_listing_becomes_backups_partials_and_invalid_entries() {
        let mut manifest = crate::manifest::tests::sample();
        manifest.name = "20261125T000000Z".into();
        let text = toml::to_string_pretty(&manifest).unwrap();
        let mut out = Vec::new();
        for (name, kind, body) in [
            ("20261125T000000Z", "m", text.as_str()),
            ("20261126T000000Z.partial", "d", ""),
            ("broken\nname", "m", "not toml ["),
            ("lost+found", "d", ""),
        ] {
            for field in [name, kind, body] {
                out.extend_from_slice(field.as_bytes());
                out.push(0);
            }
        }
        let entries = parse_listing(Path::new("/srv/b"), &out);
        let names: Vec<&str> = entries.iter().map(Entry::name).collect();
        assert_eq!(
            names,
            vec!["20261125T000000Z", "20261126T000000Z", "broken\nname"]
        );
        assert!(
            matches!(&entries[0], Entry::Backup(b) if b.path == Path::new("/srv/b/20261125T000000Z"))
        );
        assert!(matches!(&entries[1], Entry::Partial { .. }));
        assert!(matches!(&entries[2], Entry::Invalid { .. }));
    }

    #[test]
    fn a_receive_command_reaches_the_backup_host_as_the_same_words_and_runs_nothing_else() {
        let hostile = "/srv/b; $(touch pwned) `id` 'q'\nline/20261125T000000Z.partial";
        let cmd = Cmd::new("printf").args(["%s\\0", hostile]).env("TZ", "UTC");
        let words = remote_words(&cmd);
        assert_eq!(
            words,
            vec!["env", "LC_ALL=C", "TZ=UTC", "printf", "%s\\0", hostile]
        );
        // The line ssh hands to the remote user's shell.
        let out = std::process::Command::new("sh")
            .args(["-c", &crate::ssh::session::command_line(&words)])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, format!("{hostile}\0").into_bytes());
    }
}

#[cfg(test)]
pub(crate) mod remote {
    //! Against a real sshd started by the test (root only: sshd needs it).

    use super::super::*;
    use dbsnap_test_support::sshd::Sshd;

    pub fn open(sshd: &Sshd, dir: &Path, state: &Path) -> SshDir {
        let target = SshTarget::parse(&sshd.url(dir)).unwrap();
        let config = SshConfig {
            identity_file: Some(sshd.identity.clone()),
            known_hosts: Some(sshd.known_hosts.clone()),
            options: vec![],
        };
        SshDir::new(target, &config, state)
    }

    #[tokio::test]
    async fn a_directory_over_ssh_passes_the_destination_conformance_checks() {
        let sshd = Sshd::start();
        let remote = tempfile::tempdir().unwrap();
        let dir = remote.path().join("b; $(touch pwned) 'q'\nz");
        std::fs::create_dir(&dir).unwrap();
        let state = tempfile::tempdir().unwrap();
        let dest = open(&sshd, &dir, state.path());
        crate::destination::conformance::check(&dest).await;
        assert!(!Path::new("pwned").exists() && !dir.join("pwned").exists());
        assert!(
            dest.free_bytes().await.unwrap().is_some_and(|b| b > 0),
            "df over ssh reads the free space"
        );
        assert!(
            sshd.log_text().matches("Accepted publickey").count() == 1,
            "one connection for the whole run: {}",
            sshd.log_text()
        );
    }
}
