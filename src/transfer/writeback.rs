//! Bounded dirty data for writers dbsnap does not control (rsync, `btrfs receive`):
//! they write through the page cache, so dbsnap flushes the destination's filesystem
//! (`syncfs`) every [`EVERY`] while they run. No more than that much of the copy is
//! ever dirty, and the flush before publishing finds little left. (dbsnap's own copy
//! engine writes back as it goes instead, see `local`.)

use std::path::Path;
use std::time::Duration;

/// How often the destination is flushed while an outside program writes into it.
pub const EVERY: Duration = Duration::from_secs(1);

/// Flush the filesystem holding `partial` every `every`. Never returns (the copy
/// beside it ends it).
pub async fn flush_every(partial: &Path, every: Duration) -> ! {
    loop {
        tokio::time::sleep(every).await;
        let dir = partial.to_path_buf();
        let flushed =
            tokio::task::spawn_blocking(move || crate::destination::local::sync_tree(&dir)).await;
        if let Ok(Err(e)) = flushed {
            tracing::debug!("flushing the destination while copying: {e:#}");
        }
    }
}
