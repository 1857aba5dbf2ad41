//! The forwarding path: the listener, one session task per client
//! connection, TLS on either side, and the errors a session ends with.

pub mod error;
pub mod listen;
pub mod server;
pub mod session;
