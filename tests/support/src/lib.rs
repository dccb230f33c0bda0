//! Test helpers shared by dbsnap's integration tests and the backends' own tests.
//! Everything here drives the real thing: real servers, real filesystems, real VMs.
pub mod bank;
pub mod btrfs;
pub mod guest;
pub mod mariadb;
pub mod zfs_fuse;
