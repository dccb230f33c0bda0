//! The systemd units in packaging/systemd: the plain units are the templates for
//! /etc/dbsnap/dbsnap.toml, word for word, so the two cannot drift apart. (The package
//! tier runs `systemd-analyze verify` on the installed units and their ExecStart lines.)

use std::path::Path;

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/systemd");

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(UNITS).join(name)).unwrap()
}

#[test]
fn plain_units_are_the_templates_for_the_default_config() {
    for unit in [
        "dbsnap-backup.service",
        "dbsnap-backup.timer",
        "dbsnap-cleanup.service",
        "dbsnap-cleanup.timer",
    ] {
        let template = read(&unit.replacen('.', "@.", 1));
        assert_eq!(read(unit), template.replace("%i", "dbsnap"), "{unit}");
    }
}

#[test]
fn services_page_on_failure_and_timers_catch_up() {
    for service in ["dbsnap-backup@.service", "dbsnap-cleanup@.service"] {
        let text = read(service);
        assert!(
            text.contains("\nOnFailure=dbsnap-failure@%N.service\n"),
            "{service}"
        );
        assert!(text.contains("\nExecStart=/usr/bin/dbsnap --"), "{service}");
        assert!(text.contains("/etc/dbsnap/%i.toml"), "{service}");
    }
    let backup = read("dbsnap-backup@.timer");
    for line in [
        "Persistent=true",
        "RandomizedDelaySec=30min",
        "WantedBy=timers.target",
    ] {
        assert!(backup.contains(&format!("\n{line}\n")), "{line}");
    }
    assert!(read("dbsnap-backup@.service")
        .contains("\nExecStartPost=/usr/bin/dbsnap --config /etc/dbsnap/%i.toml prune\n"));
}
