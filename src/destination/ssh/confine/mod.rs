//! `dbsnap ssh-confine --root DIR`: the forced command of dbsnap's key on a backup
//! host (`command="..."` in `authorized_keys`). A stolen key then runs only what dbsnap
//! sends, on paths inside DIR:
//!
//! - the command line ssh received (`SSH_ORIGINAL_COMMAND`) is split into words as a
//!   POSIX shell would (`shlex`), and never given to a shell;
//! - it must be one of [`commands::ALL`](super::commands::ALL) — the same values
//!   dbsnap builds its commands from, fixed words and scripts compared byte for byte —
//!   or rsync's server as dbsnap runs it ([`rsync`]);
//! - every path argument must resolve (symlinks followed, `..` refused) inside DIR,
//!   strictly below it for anything that writes or removes; a checksums list passed
//!   to `b3sum --check` has each of its paths checked the same way;
//! - then the program is executed directly, with `PATH` fixed and nothing else of the
//!   environment.
//!
//! Anything else is refused with a message on stderr naming what and why, and exit
//! status [`REFUSED_STATUS`]; nothing runs.

mod paths;
mod rsync;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use super::commands::{Arg, Input, RemoteCommand, ALL};
use crate::transfer::checksums::Checksums;
use paths::{Depth, Root};

/// What a refusal starts with on stderr (dbsnap's own messages look for it).
pub const REFUSED: &str = "dbsnap ssh-confine refused";

/// The exit status of a refusal (126: "cannot execute", as a shell says).
pub const REFUSED_STATUS: u8 = 126;

/// The only `PATH` the allowed programs see.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// At most this much of a checksums list is read (about ten million files).
const CHECKSUMS_LIMIT: u64 = 1 << 30;

/// Check the command sshd was asked to run and run it; refuse anything else.
pub fn run(root: &Path) -> ExitCode {
    match confine(root) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("{REFUSED}: {why}");
            ExitCode::from(REFUSED_STATUS)
        }
    }
}

fn confine(root: &Path) -> Result<ExitCode, String> {
    let root = Root::new(root)?;
    let line = std::env::var("SSH_ORIGINAL_COMMAND").map_err(|e| match e {
        std::env::VarError::NotPresent => {
            "no command was given: this key runs only what dbsnap sends (it has no shell)".into()
        }
        std::env::VarError::NotUnicode(_) => "the command line is not UTF-8".to_string(),
    })?;
    let words = shlex::split(&line)
        .ok_or_else(|| "the command line does not parse (an unclosed quote)".to_string())?;
    if words.first().map(String::as_str) == Some("rsync") {
        // Unbuffered: what follows the secluded arguments is rsync's protocol.
        let mut stdin = std::fs::File::from(
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("reading stdin: {e}"))?,
        );
        let argv = rsync::check(&words, &mut stdin, &root)?;
        return Err(exec(&argv));
    }
    let command = allowed(&words, &root)?;
    match command.input {
        Input::Data => Err(exec(&words)),
        Input::Checksums => {
            let mut text = String::new();
            std::io::stdin()
                .take(CHECKSUMS_LIMIT)
                .read_to_string(&mut text)
                .map_err(|e| format!("reading the checksums list: {e}"))?;
            let base = Path::new(&words[command.words.len()]);
            let list = checked_checksums(&text, base, &root)?;
            run_with_input(&words, list.as_bytes())
        }
    }
}

/// The command of [`ALL`] that `words` is, once its arguments are checked.
fn allowed(words: &[String], root: &Root) -> Result<&'static RemoteCommand, String> {
    let program = words.first().map(String::as_str).unwrap_or_default();
    let command = ALL
        .iter()
        .copied()
        .find(|c| {
            words.len() >= c.words.len() && c.words.iter().zip(words).all(|(w, given)| w == given)
        })
        .ok_or_else(|| match program {
            "sh" => "a shell script that is not one of dbsnap's".to_string(),
            _ => format!("{program:?} (with these options) is not a command dbsnap runs here"),
        })?;
    let values = &words[command.words.len()..];
    if values.len() < command.args.len()
        || (values.len() > command.args.len() && command.more.is_none())
    {
        return Err(format!(
            "{}: {} arguments where dbsnap sends {}",
            command.what,
            values.len(),
            command.args.len()
        ));
    }
    let first = values.first().map(Path::new);
    let kinds = command.args.iter().chain(command.more.iter().cycle());
    for (value, kind) in values.iter().zip(kinds) {
        let checked = match kind {
            Arg::Dir => root.check(Path::new(value), Depth::RootOrBelow),
            Arg::Below => root.check(Path::new(value), Depth::Below),
            Arg::Relative => root.check_relative(first.expect("a first argument"), value),
            Arg::Program => program_name(value),
        };
        checked.map_err(|why| format!("{}: {why}", command.what))?;
    }
    Ok(command)
}

fn program_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-._".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!("{name:?} is not a program name")),
    }
}

/// Replace this process with `argv` (returns only the reason it could not).
fn exec(argv: &[String]) -> String {
    let err = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .exec();
    format!("cannot run {}: {err}", argv[0])
}

/// The checksums list `text` as parsed, re-rendered, once each of its paths (relative
/// to `base`) is checked: the command that reads it then reads nothing this check did
/// not see.
fn checked_checksums(text: &str, base: &Path, root: &Root) -> Result<String, String> {
    let sums = Checksums::parse(text).map_err(|e| format!("the checksums list: {e:#}"))?;
    for (name, hash) in &sums.0 {
        let name = name.to_string_lossy();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the checksums list: the checksum of {name:?} is not a BLAKE3 hex digest"
            ));
        }
        root.check_relative(base, &name)
            .map_err(|why| format!("the checksums list: {why}"))?;
    }
    Ok(sums.render())
}

/// Run `words` with `input` on its stdin, and exit as it did.
fn run_with_input(words: &[String], input: &[u8]) -> Result<ExitCode, String> {
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", words[0]))?;
    let mut pipe = child.stdin.take().expect("piped");
    // A command that stops reading early still reports why through its status.
    let _ = pipe.write_all(input);
    drop(pipe);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", words[0]))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(128).clamp(0, 255) as u8
    ))
}

#[cfg(test)]
mod tests;
