//! What the CLI's test binaries share.

use std::process::Command;

/// The `cairn` binary under test, with none of the user's store settings
/// from the environment: every test names its own.
pub fn cairn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.env_remove("CAIRN_DATA_DIR")
        .env_remove("CAIRN_STORE_ADDR")
        .env_remove("CAIRN_CACHE_DIR");
    c
}
