//! dbsnap-bench-ssh: what a backup to another host over ssh costs (loopback, a test
//! sshd from tests/support), against a plain `rsync -a -e ssh` of the same snapshot.
//!
//! One rig (MariaDB on a loop-device btrfs with filler data) and one sshd; the remote
//! directory is on the work directory's filesystem (no reflinks: `--link-dest`):
//! 1. `rsync -a -e ssh` of a read-only snapshot of the datadir (the reference);
//! 2. the first (full) dbsnap backup: seconds and bytes on the wire;
//! 3. after the usual churn (bank writes plus 2 % of the filler rows rewritten), the
//!    second backup: seconds and bytes on the wire;
//! 4. a fresh chain whose first backup is cut off at half the data (the sshd sessions
//!    killed, as a network drop would) and resumed by the next run: the bytes of both
//!    runs against an uninterrupted one.
//!
//! Writes `ssh.json` and `ssh.md` into `--out`. Run as root:
//! `cargo run --release -p dbsnap-bench --bin dbsnap-bench-ssh -- --size 1`.

#[path = "../rig.rs"]
mod rig;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use dbsnap_test_support::bank::Writers;
use dbsnap_test_support::sshd::Sshd;
use serde::Serialize;

use rig::Rig;

#[derive(Parser)]
#[command(about = "Full, incremental and resumed backups over ssh, against rsync -a -e ssh")]
struct Args {
    /// Data size in GB (InnoDB filler rows).
    #[arg(long, default_value_t = 1.0)]
    size: f64,
    /// Seconds of bank writes before the second backup.
    #[arg(long, default_value_t = 5.0)]
    churn_secs: f64,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// The dbsnap binary (default: `dbsnap` next to this benchmark's executable).
    #[arg(long)]
    dbsnap: Option<PathBuf>,
}

#[derive(Serialize, Default)]
struct Figures {
    data_mib: u64,
    rsync_reference_s: f64,
    rsync_reference_wire_mib: f64,
    full_s: f64,
    full_wire_mib: f64,
    second_s: f64,
    second_wire_mib: f64,
    /// What the cut-off run had stored when it was cut (its bytes on the wire, as
    /// nothing is compressed).
    cut_at_mib: f64,
    resumed_s: f64,
    resumed_wire_mib: f64,
    /// (cut-off + resumed) / uninterrupted full.
    resume_ratio: f64,
}

const MIB: f64 = 1048576.0;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: the benchmark mounts loop devices and starts MariaDB and sshd"
    );
    let dbsnap = match &args.dbsnap {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("dbsnap"),
    };
    ensure!(
        dbsnap.exists(),
        "{} not found: build it first",
        dbsnap.display()
    );
    eprintln!("== {} GB: loading data", args.size);
    let rig = Rig::new(&args.work_dir, args.size, &dbsnap)?;
    let sshd = Sshd::start();
    let mut f = Figures {
        data_mib: rig::dir_bytes(&rig.datadir) >> 20,
        ..Figures::default()
    };
    let remote = rig.dir.path().join("remote");
    std::fs::create_dir(&remote)?;

    let (s, wire) = reference(&rig, &sshd, &remote.join("reference"))?;
    (f.rsync_reference_s, f.rsync_reference_wire_mib) = (s, wire);
    eprintln!("-- rsync -a -e ssh: {s:.1} s, {wire:.0} MiB on the wire");

    let chain = remote.join("chain");
    std::fs::create_dir(&chain)?;
    write_config(&rig, &sshd, &chain, "")?;
    let (s, m) = backup(&rig)?;
    (f.full_s, f.full_wire_mib) = (s, wire_mib(&m));
    eprintln!("-- full: {s:.1} s, {:.0} MiB on the wire", f.full_wire_mib);
    churn(&rig, args.churn_secs);
    std::thread::sleep(Duration::from_millis(1100));
    let (s, m) = backup(&rig)?;
    (f.second_s, f.second_wire_mib) = (s, wire_mib(&m));
    eprintln!(
        "-- second: {s:.1} s, {:.0} MiB on the wire",
        f.second_wire_mib
    );

    let cut = remote.join("cut");
    std::fs::create_dir(&cut)?;
    // Slow enough to be cut at half: about 20 s for the whole copy.
    let limit = (f.data_mib / 20).max(1);
    write_config(&rig, &sshd, &cut, &format!("bwlimit = \"{limit}MiB\""))?;
    f.cut_at_mib = cut_off_at_half(&rig, &sshd, &cut, f.data_mib)?;
    write_config(&rig, &sshd, &cut, "")?;
    let (s, m) = backup(&rig)?;
    ensure!(
        m["transfer"]["resumed_from"].is_string(),
        "the run did not resume: {m}"
    );
    (f.resumed_s, f.resumed_wire_mib) = (s, wire_mib(&m));
    f.resume_ratio = (f.cut_at_mib + f.resumed_wire_mib) / f.full_wire_mib;
    eprintln!(
        "-- cut at {:.0} MiB, resumed with {:.0} MiB: {:.2} x an uninterrupted run",
        f.cut_at_mib, f.resumed_wire_mib, f.resume_ratio
    );

    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("ssh.json"), serde_json::to_string_pretty(&f)?)?;
    let md = table(&f);
    std::fs::write(args.out.join("ssh.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn write_config(rig: &Rig, sshd: &Sshd, dest: &Path, extra: &str) -> anyhow::Result<()> {
    std::fs::write(
        &rig.config,
        format!(
            "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
             [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {url:?}\n{extra}\n\n\
             [backup.ssh]\nidentity_file = {key:?}\nknown_hosts = {known:?}\n",
            state = rig.dir.path().join("state"),
            socket = rig.server.socket,
            url = sshd.url(dest),
            key = sshd.identity,
            known = sshd.known_hosts,
        ),
    )?;
    Ok(())
}

fn backup(rig: &Rig) -> anyhow::Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let out = Command::new(&rig.dbsnap)
        .arg("--config")
        .arg(&rig.config)
        .args(["backup", "--json"])
        .output()?;
    let s = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((s, serde_json::from_slice(&out.stdout)?))
}

fn wire_mib(manifest: &serde_json::Value) -> f64 {
    manifest["transfer"]["wire_bytes"].as_u64().unwrap_or(0) as f64 / MIB
}

fn churn(rig: &Rig, secs: f64) {
    let writers = Writers::start(&rig.server.socket, 4);
    rig.server
        .sql("UPDATE bank.filler SET pad = RANDOM_BYTES(1024) WHERE id % 50 = FLOOR(RAND() * 50)");
    std::thread::sleep(Duration::from_secs_f64(secs));
    writers.stop();
}

/// `rsync -a -e ssh` of a read-only snapshot of the datadir: seconds and MiB sent.
fn reference(rig: &Rig, sshd: &Sshd, to: &Path) -> anyhow::Result<(f64, f64)> {
    let snapshot = rig.fs.mountpoint.join("reference-snapshot");
    rig.snapshot_datadir(&snapshot)?;
    let shell = format!(
        "ssh -p {} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        sshd.port,
        sshd.identity.display(),
        sshd.known_hosts.display()
    );
    let started = Instant::now();
    let out = Command::new("rsync")
        .args(["-a", "--stats", "-e", &shell])
        .arg(format!("{}/", snapshot.display()))
        .arg(format!("root@127.0.0.1:{}/", to.display()))
        .output()?;
    let s = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = text
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .and_then(|n| n.replace(',', "").parse::<f64>().ok())
        .unwrap_or(0.0);
    rig::delete_subvolume(&snapshot)?;
    rig::run("rm", &["-rf".as_ref(), to.as_os_str()])?;
    Ok((s, sent / MIB))
}

/// Start a backup into `dest`, cut its connection once its partial holds half the
/// data, and return what the partial held then (MiB).
fn cut_off_at_half(rig: &Rig, sshd: &Sshd, dest: &Path, data_mib: u64) -> anyhow::Result<f64> {
    let mut child = Command::new(&rig.dbsnap)
        .arg("--config")
        .arg(&rig.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let held = loop {
        let held = std::fs::read_dir(dest)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .map(|e| rig::dir_bytes(&e.path()))
            .sum::<u64>();
        if held >= (data_mib << 20) / 2 {
            break held;
        }
        ensure!(
            Instant::now() < deadline,
            "the copy never reached half the data"
        );
        ensure!(
            child.try_wait()?.is_none(),
            "the backup ended before half the data"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    sshd.kill_sessions();
    let status = child.wait()?;
    ensure!(!status.success(), "the cut-off backup succeeded");
    std::thread::sleep(Duration::from_millis(1100));
    Ok(held as f64 / MIB)
}

fn table(f: &Figures) -> String {
    format!(
        "Over ssh on loopback, {} MiB of data, link-dest destination (ext4):\n\n\
         | run | s | MiB on the wire |\n|---|---|---|\n\
         | `rsync -a -e ssh` of the snapshot (reference) | {:.1} | {:.0} |\n\
         | dbsnap, first (full) backup | {:.1} | {:.0} |\n\
         | dbsnap, second backup after churn | {:.1} | {:.0} ({:.1} % of the full) |\n\
         | dbsnap, full cut off at half, then resumed | {:.1} (resumed run) | {:.0} + {:.0} = {:.2} x the full |\n",
        f.data_mib,
        f.rsync_reference_s,
        f.rsync_reference_wire_mib,
        f.full_s,
        f.full_wire_mib,
        f.second_s,
        f.second_wire_mib,
        100.0 * f.second_wire_mib / f.full_wire_mib.max(1.0),
        f.resumed_s,
        f.cut_at_mib,
        f.resumed_wire_mib,
        f.resume_ratio,
    )
}
