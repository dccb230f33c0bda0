//! Copying frozen files to the destination.

pub mod checksums;
pub mod incremental;
pub mod native;
pub mod rsync;

pub use rsync::{copy, CopyItem, TransferStats};
