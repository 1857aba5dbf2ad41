//! Traffic capture: the recorder that writes capture files, reading them
//! back, and `capture export` to pcapng. `replay` (a sibling folder) reads
//! them too.

pub mod export;
mod files;
mod recorder;

pub use files::*;
pub use recorder::*;
