//! The fixed POSIX `sh` scripts an ssh destination runs remotely: paths and names are
//! their positional arguments (`$1`...), never part of the script.

/// ended by NUL (a manifest is text: it holds no NUL).
pub(super) const LIST: &str = r#"cd -- "$1" || exit 3
for d in *; do
  [ -d "$d" ] || continue
  printf '%s\0' "$d"
  if [ -f "$d/manifest.toml" ]; then printf 'm\0'; cat -- "$d/manifest.toml"; printf '\0'
  else printf 'd\0\0'; fi
done"#;

/// Exit 3: missing; 4: not a directory; 5: not writable; 6: commands missing (named).
pub(super) const CHECK: &str = r#"d=$1; shift
[ -e "$d" ] || exit 3
[ -d "$d" ] || exit 4
t=$(mktemp -p "$d" .dbsnap-probe.XXXXXX 2>&1) || { printf '%s' "$t" >&2; exit 5; }
rm -f -- "$t"
missing=
for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
[ -z "$missing" ] || { printf '%s' "$missing" >&2; exit 6; }"#;

/// The manifest (stdin) written durably, the files synced, then one rename.
pub(super) const PUBLISH: &str = r#"set -e
cat > "$1/manifest.toml.tmp"
sync -- "$1/manifest.toml.tmp"
mv -f -- "$1/manifest.toml.tmp" "$1/manifest.toml"
sync -f -- "$1"
if [ -e "$2" ]; then printf '%s exists already' "$2" >&2; exit 5; fi
mv -T -- "$1" "$2"
sync -- "$3""#;

/// The checksums (stdin) written beside the copy, then recomputed there.
pub(super) const CHECKSUMS: &str = r#"cat > "$1/checksums" || exit 3
cd -- "$1" || exit 3
b3sum --check --quiet checksums"#;

/// A file's content if it exists (exit 3 if not).
pub(super) const READ_IF_THERE: &str = r#"[ -f "$1" ] || exit 3
cat -- "$1""#;

/// Delete files (relative to `$1`) of a partial.
pub(super) const DELETE_FILES: &str = r#"cd -- "$1" || exit 3
shift
rm -f -- "$@""#;

/// Check a stored backup against its checksums (exit 4: it has none).
pub(super) const CHECK_STORED: &str = r#"cd -- "$1" || exit 3
[ -f checksums ] || exit 4
b3sum --check --quiet checksums"#;

/// The manifest (stdin) replaced durably (a verification verdict recorded).
pub(super) const REWRITE_MANIFEST: &str = r#"set -e
cat > "$1/manifest.toml.tmp"
sync -- "$1/manifest.toml.tmp"
mv -f -- "$1/manifest.toml.tmp" "$1/manifest.toml"
sync -- "$1""#;

/// Claim a partial by creating it (exit 3: it exists, another run's).
pub(super) const MAKE_PARTIAL: &str = r#"if [ -e "$1" ]; then exit 3; fi
mkdir -- "$1""#;

/// Make a backup a partial again (one rename), if it is still there.
pub(super) const MAKE_PARTIAL_AGAIN: &str = r#"if [ -e "$1" ]; then mv -T -- "$1" "$2"; fi"#;

/// Exit 0 if the path exists, 1 if not.
pub(super) const EXISTS: &str = r#"[ -e "$1" ]"#;

/// Make a backup a partial again (one rename), then delete it.
pub(super) const REMOVE: &str = r#"if [ -e "$1" ]; then mv -T -- "$1" "$2"; fi
rm -rf -- "$2""#;
