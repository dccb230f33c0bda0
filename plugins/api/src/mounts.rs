//! The kernel's mount table (`/proc/self/mountinfo`), for mapping a path to the
//! filesystem that holds it. Backends share this instead of parsing `findmnt` or `df`.

use std::path::{Path, PathBuf};

use crate::BackendError;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem; equal for every mount of the same filesystem.
    pub device: String,
    /// The directory of the filesystem that is mounted (e.g. a btrfs subvolume path).
    pub fs_root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// This mount's options (`rw`, `noatime`, `nosuid` ...).
    pub options: String,
    /// The filesystem's own options (`attr2,inode64`, `errors=remount-ro` ...).
    pub super_options: String,
}

/// Read the current mount table.
pub fn read_mount_table() -> Result<Vec<MountEntry>, BackendError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| BackendError::io("reading /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// The mount that holds `path` (which should be canonical): the last-mounted entry
/// with the longest mount point that is a prefix of it.
pub fn mount_of(table: &[MountEntry], path: &Path) -> Option<MountEntry> {
    table
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m.clone())
}

/// Parse mountinfo text. Lines that do not parse are skipped: the kernel's format is
/// stable, and a skipped line only means a path is reported as not found.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    if left.len() < 6 || right.len() < 2 {
        return None;
    }
    Some(MountEntry {
        device: left[2].to_string(),
        fs_root: PathBuf::from(unescape(left[3])),
        mount_point: PathBuf::from(unescape(left[4])),
        options: left[5].to_string(),
        fstype: right[0].to_string(),
        source: unescape(right[1]),
        super_options: right.get(2).map_or(String::new(), |o| o.to_string()),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 0:45 / /srv/db\\040one rw,relatime shared:50 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
99 98 0:45 /mysql /srv/db\\040one/mysql rw,relatime shared:51 - btrfs /dev/loop0 rw,subvolid=256,subvol=/mysql
100 22 0:50 / /tank/data rw - zfs tank/data rw,xattr
";

    #[test]
    fn parses_and_unescapes() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].mount_point, PathBuf::from("/srv/db one"));
        assert_eq!(t[1].fstype, "btrfs");
        assert_eq!(t[2].fs_root, PathBuf::from("/mysql"));
        assert_eq!(t[3].source, "tank/data");
        assert_eq!(t[1].options, "rw,relatime");
        assert_eq!(t[1].super_options, "rw,space_cache=v2,subvolid=5,subvol=/");
    }

    #[test]
    fn finds_the_deepest_mount() {
        let t = parse_mountinfo(SAMPLE);
        let m = mount_of(&t, Path::new("/srv/db one/mysql/ibdata1")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/srv/db one/mysql"));
        let m = mount_of(&t, Path::new("/srv/db one/other")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/srv/db one"));
        let m = mount_of(&t, Path::new("/srv/db onex")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/"));
    }

    #[test]
    fn later_mount_over_same_point_wins() {
        let text = "1 0 8:1 / /a rw - ext4 /dev/sda1 rw\n2 1 0:9 / /a rw - btrfs /dev/loop1 rw\n";
        let t = parse_mountinfo(text);
        assert_eq!(mount_of(&t, Path::new("/a/b")).unwrap().fstype, "btrfs");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// How the kernel writes a path into mountinfo: space, tab, newline and backslash
    /// as `\ooo`.
    fn escape(path: &str) -> String {
        path.chars()
            .map(|c| match c {
                ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
                c => c.to_string(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_without_panicking(text in "(?s).{0,400}") {
            let _ = parse_mountinfo(&text);
        }

        #[test]
        fn mount_points_with_any_characters_round_trip(
            mount_point in "/[^\u{0}]{0,40}",
            fs_root in "/[^\u{0}]{0,20}",
            source in "[^\u{0} ]{1,20}",
            fstype in "[a-z0-9]{1,8}",
        ) {
            let line = format!(
                "36 35 98:0 {} {} rw,noatime master:1 - {fstype} {} rw,errors=continue\n",
                escape(&fs_root),
                escape(&mount_point),
                escape(&source)
            );
            let table = parse_mountinfo(&line);
            prop_assert_eq!(table.len(), 1);
            prop_assert_eq!(&table[0].mount_point, &PathBuf::from(&mount_point));
            prop_assert_eq!(&table[0].fs_root, &PathBuf::from(&fs_root));
            prop_assert_eq!(&table[0].source, &source);
            prop_assert_eq!(&table[0].fstype, &fstype);
            prop_assert_eq!(&table[0].device, "98:0");
        }
    }
}
