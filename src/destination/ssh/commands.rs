//! Every command dbsnap runs on a backup host (besides rsync), as data. The same value
//! builds the command here ([`RemoteCommand::argv`]) and is what the backup host's
//! forced command allows there ([`super::confine`]): what a confined key permits is
//! exactly what dbsnap sends, and a command added here is allowed there at once.
//!
//! A command is fixed words (a program and its options, or `sh -c SCRIPT sh` with one
//! of the fixed scripts of [`super::scripts`]) followed by its variable arguments,
//! each of a kind the forced command checks ([`Arg`]).

use super::scripts::*;

/// What a variable argument of a remote command is, for the forced command's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// The confined directory itself or a path below it (listed, read, synced; never
    /// removed or replaced).
    Dir,
    /// A path strictly below the confined directory.
    Below,
    /// A path relative to the command's first argument (a file of a backup), which
    /// must resolve below the confined directory too.
    Relative,
    /// The name of a program that the check looks for (`command -v`).
    Program,
}

/// What a remote command reads on its standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing, or data it stores below its first argument (a manifest).
    Data,
    /// A `checksums` list whose files the command reads (`b3sum --check -`): the forced
    /// command checks each of its paths like a [`Arg::Relative`] one.
    Checksums,
}

#[derive(Debug)]
pub struct RemoteCommand {
    /// What it is for (in refusals).
    pub what: &'static str,
    /// The fixed leading words.
    pub words: &'static [&'static str],
    /// One value per entry after the fixed words...
    pub args: &'static [Arg],
    /// ...then any number of these.
    pub more: Option<Arg>,
    pub input: Input,
}

impl RemoteCommand {
    /// The argv: the fixed words, then `values` (one per [`RemoteCommand::args`] entry,
    /// then any number for [`RemoteCommand::more`]).
    pub fn argv<'a>(&'a self, values: &[&'a str]) -> Vec<&'a str> {
        assert!(
            values.len() == self.args.len()
                || (values.len() > self.args.len() && self.more.is_some()),
            "{}: {} values for {} arguments",
            self.what,
            values.len(),
            self.args.len()
        );
        self.words
            .iter()
            .copied()
            .chain(values.iter().copied())
            .collect()
    }
}

use Arg::*;

const fn remote(
    what: &'static str,
    words: &'static [&'static str],
    args: &'static [Arg],
    more: Option<Arg>,
    input: Input,
) -> RemoteCommand {
    RemoteCommand {
        what,
        words,
        args,
        more,
        input,
    }
}

pub const LIST: RemoteCommand = remote(
    "listing the backups",
    &["sh", "-c", LIST_SH, "sh"],
    &[Dir],
    None,
    Input::Data,
);
pub const CHECK: RemoteCommand = remote(
    "checking the destination",
    &["sh", "-c", CHECK_SH, "sh"],
    &[Dir],
    Some(Program),
    Input::Data,
);
pub const PUBLISH: RemoteCommand = remote(
    "publishing a backup",
    &["sh", "-c", PUBLISH_SH, "sh"],
    &[Below, Below, Dir],
    None,
    Input::Data,
);
pub const STORE_CHECKSUMS: RemoteCommand = remote(
    "storing the checksums",
    &["sh", "-c", STORE_CHECKSUMS_SH, "sh"],
    &[Below],
    None,
    Input::Data,
);
pub const CHECK_CHECKSUMS: RemoteCommand = remote(
    "checking files against their checksums",
    &["sh", "-c", CHECK_CHECKSUMS_SH, "sh"],
    &[Below],
    None,
    Input::Checksums,
);
pub const READ_IF_THERE: RemoteCommand = remote(
    "reading a backup's file",
    &["sh", "-c", READ_IF_THERE_SH, "sh"],
    &[Below],
    None,
    Input::Data,
);
pub const DELETE_FILES: RemoteCommand = remote(
    "deleting files of a partial backup",
    &["sh", "-c", DELETE_FILES_SH, "sh"],
    &[Below],
    Some(Relative),
    Input::Data,
);
pub const REWRITE_MANIFEST: RemoteCommand = remote(
    "rewriting a manifest",
    &["sh", "-c", REWRITE_MANIFEST_SH, "sh"],
    &[Below],
    None,
    Input::Data,
);
pub const MAKE_PARTIAL: RemoteCommand = remote(
    "creating a partial backup",
    &["sh", "-c", MAKE_PARTIAL_SH, "sh"],
    &[Below],
    None,
    Input::Data,
);
pub const REMOVE: RemoteCommand = remote(
    "removing a backup",
    &["sh", "-c", REMOVE_SH, "sh"],
    &[Below, Below],
    None,
    Input::Data,
);
pub const MAKE_PARTIAL_AGAIN: RemoteCommand = remote(
    "making a backup a partial again before its received copies are deleted",
    &["sh", "-c", MAKE_PARTIAL_AGAIN_SH, "sh"],
    &[Below, Below],
    None,
    Input::Data,
);
pub const EXISTS: RemoteCommand = remote(
    "looking whether a backup's received copy is there",
    &["sh", "-c", EXISTS_SH, "sh"],
    &[Below],
    None,
    Input::Data,
);
pub const FREE_SPACE: RemoteCommand = remote(
    "reading the free space",
    &["df", "-B1", "--output=avail", "--"],
    &[Dir],
    None,
    Input::Data,
);
pub const STORED_BYTES: RemoteCommand = remote(
    "reading a backup's size",
    &["du", "-s", "-b", "--"],
    &[Dir],
    None,
    Input::Data,
);
pub const RENAME: RemoteCommand = remote(
    "taking over a partial backup",
    &["mv", "-T", "--"],
    &[Below, Below],
    None,
    Input::Data,
);
pub const REFLINK_FILE: RemoteCommand = remote(
    "probing for reflinks",
    &["cp", "--reflink=always", "--"],
    &[Below, Below],
    None,
    Input::Data,
);
pub const REFLINK_TREE: RemoteCommand = remote(
    "seeding a backup with reflinks",
    &["cp", "-a", "--reflink=always", "--"],
    &[Below, Below],
    None,
    Input::Data,
);
pub const REMOVE_FILE: RemoteCommand = remote(
    "removing the reflink probe",
    &["rm", "-f", "--"],
    &[Below],
    None,
    Input::Data,
);
pub const REMOVE_TREE: RemoteCommand = remote(
    "removing a failed reflink seed",
    &["rm", "-rf", "--"],
    &[Below],
    None,
    Input::Data,
);

/// Every command above: what `dbsnap ssh-confine` allows (with rsync's server).
pub static ALL: [&RemoteCommand; 19] = [
    &LIST,
    &CHECK,
    &PUBLISH,
    &STORE_CHECKSUMS,
    &CHECK_CHECKSUMS,
    &READ_IF_THERE,
    &DELETE_FILES,
    &REWRITE_MANIFEST,
    &MAKE_PARTIAL,
    &REMOVE,
    &MAKE_PARTIAL_AGAIN,
    &EXISTS,
    &FREE_SPACE,
    &STORED_BYTES,
    &RENAME,
    &REFLINK_FILE,
    &REFLINK_TREE,
    &REMOVE_FILE,
    &REMOVE_TREE,
];
