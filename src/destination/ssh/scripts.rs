//! The fixed POSIX `sh` scripts an ssh destination runs remotely: paths and names are
//! their positional arguments (`$1`...), never part of the script.

/// Each entry of `$1`: its name, then `m` and its manifest or `d` and nothing, each
/// ended by NUL (a manifest is text: it holds no NUL).
pub(super) const LIST_SH: &str = r#"cd -- "$1" || exit 3
for d in *; do
  [ -d "$d" ] || continue
  printf '%s\0' "$d"
  if [ -f "$d/manifest.toml" ]; then printf 'm\0'; cat -- "$d/manifest.toml"; printf '\0'
  else printf 'd\0\0'; fi
done"#;

/// Exit 3: missing; 4: not a directory; 5: not writable; 6: commands missing (named).
pub(super) const CHECK_SH: &str = r#"d=$1; shift
[ -e "$d" ] || exit 3
[ -d "$d" ] || exit 4
t=$(mktemp -p "$d" .dbsnap-probe.XXXXXX 2>&1) || { printf '%s' "$t" >&2; exit 5; }
rm -f -- "$t"
missing=
for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
[ -z "$missing" ] || { printf '%s' "$missing" >&2; exit 6; }"#;

/// The manifest (stdin) written durably, the files synced, then one rename.
pub(super) const PUBLISH_SH: &str = r#"set -e
cat > "$1/manifest.toml.tmp"
sync -- "$1/manifest.toml.tmp"
mv -f -- "$1/manifest.toml.tmp" "$1/manifest.toml"
sync -f -- "$1"
if [ -e "$2" ]; then printf '%s exists already' "$2" >&2; exit 5; fi
mv -T -- "$1" "$2"
sync -- "$3""#;

/// The checksums (stdin) stored beside the copy.
pub(super) const STORE_CHECKSUMS_SH: &str = r#"cat > "$1/checksums""#;

/// The files below `$1` checked against the checksums on stdin (exit 1: some differ,
/// each named `NAME: FAILED` on stdout). b3sum reads the list from stdin, not from a
/// file there: the forced command checks the paths in what it passes on, and nothing
/// can change the list after that check.
pub(super) const CHECK_CHECKSUMS_SH: &str = r#"cd -- "$1" || exit 3
b3sum --check --quiet -"#;

/// A file's content if it exists (exit 3 if not).
pub(super) const READ_IF_THERE_SH: &str = r#"[ -f "$1" ] || exit 3
cat -- "$1""#;

/// Delete files (relative to `$1`) of a partial.
pub(super) const DELETE_FILES_SH: &str = r#"cd -- "$1" || exit 3
shift
rm -f -- "$@""#;

/// The manifest (stdin) replaced durably (a verification verdict recorded).
pub(super) const REWRITE_MANIFEST_SH: &str = r#"set -e
cat > "$1/manifest.toml.tmp"
sync -- "$1/manifest.toml.tmp"
mv -f -- "$1/manifest.toml.tmp" "$1/manifest.toml"
sync -- "$1""#;

/// Claim a partial by creating it (exit 3: it exists, another run's).
pub(super) const MAKE_PARTIAL_SH: &str = r#"if [ -e "$1" ]; then exit 3; fi
mkdir -- "$1""#;

/// Make a backup a partial again (one rename), if it is still there.
pub(super) const MAKE_PARTIAL_AGAIN_SH: &str = r#"if [ -e "$1" ]; then mv -T -- "$1" "$2"; fi"#;

/// Exit 0 if the path exists, 1 if not.
pub(super) const EXISTS_SH: &str = r#"[ -e "$1" ]"#;

/// Make a backup a partial again (one rename), then delete it.
pub(super) const REMOVE_SH: &str = r#"if [ -e "$1" ]; then mv -T -- "$1" "$2"; fi
rm -rf -- "$2""#;
