//! The database side: connecting, reading the server's layout, checking privileges,
//! choosing the lock mode, and the lock that makes a snapshot consistent.

pub mod coordinates;
pub mod credentials;
pub mod layout;
pub mod lock;
pub mod lock_mode;
pub mod option_files;
pub mod probe;
pub mod server;
pub mod sessions;
pub mod stall_guard;
pub mod version;

pub use coordinates::Coordinates;
pub use layout::{DbPath, Layout};
pub use lock::LockRecord;
pub use server::Server;
