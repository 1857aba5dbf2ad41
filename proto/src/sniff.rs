//! Recognising other protocols sent to the MongoDB port by mistake, so the
//! error says what happened instead of "messageLength 33620246".

use crate::frame::check_length;
use crate::{DecodeError, Header, OpCode, MAX_MESSAGE_LEN};

/// Looks at the first bytes a client sent. Returns an error naming the
/// foreign protocol, or `None` when the bytes could be MongoDB. Pass a whole
/// header (16 bytes) when there is one: a 790-byte message starts with the
/// same two bytes as a TLS record, and only its header tells them apart.
pub fn foreign_protocol(first: &[u8]) -> Option<DecodeError> {
    if let Some(h) = Header::parse(first) {
        let known = !matches!(h.op_code, OpCode::Other(_));
        if known && check_length(h.message_length, MAX_MESSAGE_LEN).is_ok() {
            return None;
        }
    }
    // TLS record: content type 22 (handshake), then major version 3.
    if first.len() >= 2 && first[0] == 0x16 && first[1] == 0x03 {
        return Some(DecodeError::TlsOnPlaintextPort);
    }
    const METHODS: [&str; 9] = [
        "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "PRI * ",
    ];
    for m in METHODS {
        let n = m.len().min(first.len());
        if n >= 4 && first[..n] == m.as_bytes()[..n] {
            return Some(DecodeError::HttpOnMongoPort {
                method: m.trim().to_string(),
            });
        }
    }
    None
}
