//! What the subcommands print on stdout. `println!` panics when stdout is a
//! closed pipe (`mongotap check-config FILE | head -1`): Rust ignores
//! SIGPIPE, so the write fails with EPIPE instead of ending the process.
//! A reader that stopped reading wanted no more; like other Unix tools,
//! the command then ends quietly and successfully. Any other write error
//! (a full disk behind a redirect) is still an error.

use std::io::{self, Write};

/// Writes `text` to stdout and flushes it. A closed stdout is not an error.
// The one place that writes stdout (clippy.toml disallows it elsewhere).
#[allow(clippy::disallowed_methods)]
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
