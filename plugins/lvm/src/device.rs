//! Device names and numbers: device-mapper's major, `vg/lv` ids, `/dev/VG/LV`, and
//! how a snapshot of each filesystem is mounted read-only.

use std::path::{Path, PathBuf};

use dbsnap_backend_api::{validate_name, BackendError, Result};

/// The block-device major number of device-mapper, from `/proc/devices`; `None` when the
/// kernel has no device-mapper (then nothing can be on LVM).
pub fn device_mapper_major() -> Result<Option<u32>> {
    let text = std::fs::read_to_string("/proc/devices")
        .map_err(|e| BackendError::io("reading /proc/devices", e))?;
    Ok(parse_device_mapper_major(&text))
}

pub fn parse_device_mapper_major(proc_devices: &str) -> Option<u32> {
    let block = proc_devices.split("Block devices:").nth(1)?;
    block.lines().find_map(|line| {
        let (major, name) = line.trim().split_once(' ')?;
        (name.trim() == "device-mapper").then(|| major.parse().ok())?
    })
}

/// `major:minor` from a mountinfo device field.
pub fn parse_device(field: &str) -> Option<(u32, u32)> {
    let (major, minor) = field.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Split and check a `vg/lv` id from the state journal before it reaches a command line.
pub fn split_lv_id(id: &str) -> Result<(&str, &str)> {
    let (vg, lv) = id.split_once('/').ok_or_else(|| {
        BackendError::Invalid(format!("{id:?} is not an LVM volume id of the form vg/lv"))
    })?;
    validate_name("volume group name", vg)?;
    validate_name("logical volume name", lv)?;
    Ok((vg, lv))
}

pub fn device_path(vg: &str, lv: &str) -> PathBuf {
    Path::new("/dev").join(vg).join(lv)
}

pub fn mount_options(fstype: &str) -> Result<&'static str> {
    match fstype {
        // The snapshot has the origin's UUID, and its log may need replaying, which a
        // read-only mount must not do.
        "xfs" => Ok("ro,nouuid,norecovery"),
        "ext4" | "ext3" => Ok("ro,noload"),
        other => Err(BackendError::Invalid(format!(
            "cannot mount a snapshot of a {other} filesystem; the LVM backend supports xfs, ext4 \
             and ext3"
        ))),
    }
}
