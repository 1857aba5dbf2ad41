//! Recognising other protocols sent to the MongoDB port by mistake, so the
//! error says what happened instead of "messageLength 33620246".

use crate::DecodeError;

/// Looks at the first bytes a client sent. Returns an error naming the
/// foreign protocol, or `None` when the bytes could be MongoDB.
pub fn foreign_protocol(first: &[u8]) -> Option<DecodeError> {
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
