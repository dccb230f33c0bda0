//! TEMPORARY (investigation of the overflow lvremove failure; removed before merge).

pub fn dump(label: &str, major: u32, minor: u32) {
    let script = r#"
major=$1; minor=$2; me=$3
want=$(printf '%x%02x' $major $minor)
echo "== $(date +%T.%N) dm-$minor ($major:$minor)"
echo "-- /sys/fs/xfs: $(ls /sys/fs/xfs | tr '\n' ' ')  /sys/fs/ext4: $(ls /sys/fs/ext4 | tr '\n' ' ')"
ls -l /dev/mapper | grep -v control | awk '{print $9, $11}' | tr '\n' ' '; echo
echo "-- dmsetup info -c"; dmsetup info -c 2>&1
echo "-- mountinfo lines with $major:$minor"; grep -H " $major:$minor " /proc/[0-9]*/mountinfo
echo "-- mnt namespaces: $(for p in /proc/[0-9]*; do readlink $p/ns/mnt; done | sort | uniq -c | tr '\n' ' ')"
echo "-- fds on the device"
for f in /proc/[0-9]*/fd/* /proc/[0-9]*/task/*/fd/*; do
  [ "$(stat -L -c %D "$f" 2>/dev/null)" = "$want" ] && echo "$f -> $(readlink "$f")"
done | sort -u
echo "-- maps"; grep -H " $(printf '%02x:%02x' $major $minor) " /proc/[0-9]*/maps
echo "-- cwd/root on it"; for p in /proc/[0-9]*; do for l in cwd root; do [ "$(stat -L -c %D $p/$l 2>/dev/null)" = "$want" ] && echo "$p/$l -> $(readlink $p/$l)"; done; done
echo "-- threads of dbsnap ($me) and its children"
for p in $me $(cat /proc/$me/task/*/children 2>/dev/null); do
  for t in /proc/$p/task/*; do
    echo "$t $(cat $t/comm) state=$(awk '{print $3}' $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
  done
done
echo "-- D-state threads"
for t in /proc/[0-9]*/task/*; do
  s=$(awk '{print $3}' $t/stat 2>/dev/null)
  [ "$s" = D ] && { echo "$t $(cat $t/comm)"; cat $t/stack 2>/dev/null; }
done
echo "-- kernel threads busy: $(ps -eLo stat,comm | awk '$1 ~ /^[RD]/' | tr '\n' ' ')"
echo "-- xfs settings"; for f in /sys/fs/xfs/dm-$minor/error/fail_at_unmount /sys/fs/xfs/dm-$minor/error/metadata/EIO/*; do [ -e $f ] && echo "$f=$(cat $f)"; done
echo "-- dmesg"; dmesg | tail -25
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", script, "dump"])
        .arg(major.to_string())
        .arg(minor.to_string())
        .arg(std::process::id().to_string())
        .output();
    let text = match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("dump failed: {e}"),
    };
    tracing::warn!("EVIDENCE {label}\n{text}");
}
