//! One module per subcommand group.

pub mod castore;
pub mod copy;
pub mod daemon;
pub mod gc;
pub mod key;
pub mod mount;
pub mod nar;
pub mod narinfo;
pub mod serve;
pub mod store;
pub mod store_path;
pub mod virtiofs;
