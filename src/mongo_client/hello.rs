//! The hello documents: the one place mongotap says who it is to a server.

use bson::{rawdoc, RawDocumentBuf};

/// The first hello on a connection: names the application, so the
/// server's logs and `$currentOp` show mongotap's own operations as such
/// and tell its users (health probe, explain, replay) apart.
pub fn handshake(app: &str) -> RawDocumentBuf {
    rawdoc! {
        "hello": 1,
        "client": {
            "application": { "name": app },
            "driver": { "name": "mongotap", "version": env!("CARGO_PKG_VERSION") },
            "os": { "type": std::env::consts::OS },
        },
        "$db": "admin",
    }
}

/// A later hello on the same connection: without `client`, which the
/// server refuses once the handshake has set it (ClientMetadataCannotBeMutated).
pub fn again() -> RawDocumentBuf {
    rawdoc! { "hello": 1, "$db": "admin" }
}
