//! Reaching another host over ssh: the destination URL, the shared connection, and
//! the quoting of every remote command.

pub mod session;
pub mod url;

pub use session::Session;
pub use url::{is_ssh, SshTarget};
