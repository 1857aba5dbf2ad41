//! Traffic capture and what reads it back: the recorder that writes
//! capture files, `capture export` to pcapng, and `replay`.

pub mod export;
mod recorder;
pub mod replay;

pub use recorder::*;
