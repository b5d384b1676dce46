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

/// Writes one line to standard output. `println!` panics when the line
/// cannot be written (a reader that closed the pipe, a full disk); this
/// returns the error instead, so `main` exits with a code scripts can test
/// (141 for a closed pipe, 1 otherwise).
pub(crate) fn say(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}
