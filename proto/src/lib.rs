//! Pure MongoDB wire-format decoding and encoding.
//!
//! Nothing here does I/O. Frames are cut out of a caller's `BytesMut` without
//! copying ([`frame::decode`]); opcode modules parse borrowed views over a
//! frame's body and encode new messages when a caller needs one.
//!
//! Every length a peer claims is checked against what is really there (and
//! against [`MAX_MESSAGE_LEN`]) before anything is read or allocated.

pub mod capture;
pub mod command;
pub mod error;
pub mod frame;
pub mod header;
pub mod hello;
pub mod message;
pub mod op_compressed;
pub mod op_msg;
pub mod op_query;
pub mod op_reply;
mod read;
pub mod reply;
pub mod rewrite;
pub mod shape;
pub mod sniff;

pub use command::CommandView;
pub use error::DecodeError;
pub use frame::{decode, Frame};
pub use header::{Header, OpCode, HEADER_LEN};
pub use reply::ReplyView;

/// The server's `maxMessageSizeBytes`: no legal frame is longer.
pub const MAX_MESSAGE_LEN: usize = 48_000_000;
