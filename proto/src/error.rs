//! The one error type of the wire-format layer.

use thiserror::Error;

/// What was wrong with the bytes. Each variant names the part of the frame
/// that failed, so a log line can tell an operator which peer sent what.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("messageLength {claimed} is below the 16-byte header size")]
    LengthTooSmall { claimed: i32 },
    #[error("messageLength {claimed} exceeds the limit of {limit} bytes")]
    LengthTooLarge { claimed: i64, limit: usize },
    #[error("the bytes look like a TLS ClientHello: the client speaks TLS to a plaintext port (enable [tls.client] or connect without tls=true)")]
    TlsOnPlaintextPort,
    #[error("the bytes look like HTTP ({method}): this port speaks the MongoDB wire protocol; the admin endpoint is elsewhere")]
    HttpOnMongoPort { method: String },
    #[error("{opcode} body is truncated: needed {needed} bytes for {what}, {left} left")]
    Truncated {
        opcode: &'static str,
        what: &'static str,
        needed: usize,
        left: usize,
    },
    #[error("OP_MSG sets unknown required flag bits {bits:#010x}")]
    UnknownRequiredFlags { bits: u32 },
    #[error("OP_MSG section kind {kind} is unknown")]
    UnknownSectionKind { kind: u8 },
    #[error("OP_MSG has {count} body sections, expected exactly one")]
    BodyCount { count: usize },
    #[error("OP_MSG document sequence size {size} is invalid ({left} bytes left in the message)")]
    SequenceSize { size: i32, left: usize },
    #[error("OP_MSG checksum mismatch: frame says {claimed:#010x}, bytes give {computed:#010x}")]
    ChecksumMismatch { claimed: u32, computed: u32 },
    #[error("invalid BSON in {opcode} {what}: {reason}")]
    InvalidBson {
        opcode: &'static str,
        what: &'static str,
        reason: String,
    },
    #[error("{opcode} cstring {what} has no terminating NUL or is not UTF-8")]
    BadCString {
        opcode: &'static str,
        what: &'static str,
    },
    #[error("OP_COMPRESSED uses unknown compressor id {id}")]
    UnknownCompressor { id: u8 },
    #[error("OP_COMPRESSED uncompressedSize {claimed} is invalid (limit {limit})")]
    UncompressedSize { claimed: i32, limit: usize },
    #[error("OP_COMPRESSED {compressor} data is corrupt: {reason}")]
    Decompress {
        compressor: &'static str,
        reason: String,
    },
    #[error(
        "OP_COMPRESSED claims {claimed} uncompressed bytes but {compressor} produced {actual}"
    )]
    UncompressedMismatch {
        compressor: &'static str,
        claimed: usize,
        actual: usize,
    },
    #[error("OP_COMPRESSED cannot compress a rewritten message with {compressor}: {reason}")]
    Compress {
        compressor: &'static str,
        reason: String,
    },
    #[error("OP_COMPRESSED wraps opcode {opcode}, which cannot be compressed")]
    NestedCompression { opcode: i32 },
    #[error("{opcode} has {extra} trailing bytes after its last document")]
    TrailingBytes { opcode: &'static str, extra: usize },
}
