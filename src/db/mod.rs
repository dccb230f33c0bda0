//! The database side: connecting, reading the server's layout, checking privileges,
//! and the lock that makes a snapshot consistent.

pub mod layout;
pub mod lock;
pub mod server;

pub use layout::{DbPath, Layout};
pub use lock::{Coordinates, LockRecord};
pub use server::Server;
