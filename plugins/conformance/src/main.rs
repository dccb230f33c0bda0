//! `dbsnap-conformance --backend SPEC --dir PATH...`: run the conformance suite against
//! a backend on storage you provide. Exits 0 when every check passes, 1 when one
//! fails, 2 when the backend cannot be opened.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dbsnap_backend_api::SnapshotBackend;
use dbsnap_conformance::{run_all, Fixture};

/// Run the dbsnap backend conformance suite. It creates and releases snapshots named
/// dbsnap-conf.* and writes a directory "dbsnap conformance files" into each --dir.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The backend: `btrfs`, or `exec:NAME` for the plugin dbsnap-backend-NAME.
    #[arg(long)]
    backend: String,
    /// A writable directory on the storage under test (a stand-in database directory).
    /// Repeat it for directories on several volumes.
    #[arg(long = "dir", required = true)]
    dirs: Vec<PathBuf>,
    /// An empty directory for the snapshots' mounts (default: a new one under /tmp).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// A directory the backend cannot snapshot; probe must refuse it.
    #[arg(long)]
    unsupported: Option<PathBuf>,
    /// exec: the directory searched for the plugin before PATH.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// exec: KEY=VALUE for the plugin's config (VALUE is JSON, or else a string).
    #[arg(long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
}

/// The backend named by `spec`. Built-in backends add their line here.
fn open(args: &Args) -> Result<Box<dyn SnapshotBackend>, String> {
    if let Some(name) = args.backend.strip_prefix("exec:") {
        let mut config = dbsnap_exec::ExecConfig {
            plugin_dir: args.plugin_dir.clone(),
            ..Default::default()
        };
        for option in &args.options {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| format!("--option {option:?} is not KEY=VALUE"))?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
            config.options.insert(key.to_string(), value);
        }
        return dbsnap_exec::Exec::new(name, config)
            .map(|e| Box::new(e) as Box<dyn SnapshotBackend>)
            .map_err(|e| e.to_string());
    }
    match args.backend.as_str() {
        "btrfs" => Ok(Box::new(dbsnap_btrfs::Btrfs::new(Default::default()))),
        other => Err(format!("unknown backend {other:?}: use btrfs or exec:NAME")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let backend = match open(&args) {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("dbsnap-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let made_workdir = args.workdir.is_none();
    let workdir = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("dbsnap-conformance-{}", std::process::id()))
    });
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        eprintln!("dbsnap-conformance: creating {}: {e}", workdir.display());
        return ExitCode::from(2);
    }
    let fixture = Fixture {
        data_dirs: args.dirs.clone(),
        workdir: workdir.clone(),
        unsupported_dir: args.unsupported.clone(),
    };
    let report = run_all(backend.as_ref(), &fixture).await;
    println!("{report}");
    if made_workdir {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    match report.passed() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}
