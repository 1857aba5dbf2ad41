//! SCRAM-SHA-256 (RFC 5802, RFC 7677): the conversation's arithmetic in
//! [`Scram`], without I/O so the RFC's test vector can check it, and the
//! saslStart/saslContinue round trips that carry it.

use super::{ClientError, UpstreamClient};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bson::raw::RawBsonRef;
use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawDocument};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

impl UpstreamClient {
    /// Authenticates with SCRAM-SHA-256 (RFC 5802, RFC 7677) against the
    /// user defined in `db`, and checks the server's signature, so a server
    /// that does not know the password cannot pretend it does.
    pub async fn auth_scram_sha256(
        &mut self,
        username: &str,
        password: &str,
        db: &str,
    ) -> Result<(), ClientError> {
        let mut scram = Scram::new(username, password, &client_nonce());
        let start = rawdoc! {
            "saslStart": 1,
            "mechanism": "SCRAM-SHA-256",
            "payload": binary(scram.client_first().into_bytes()),
            "autoAuthorize": 1,
            "options": { "skipEmptyExchange": true },
            "$db": db,
        };
        let reply = self.command(&start).await?;
        let (conversation_id, server_first) = self.sasl_step(&reply)?;
        // PBKDF2 takes milliseconds (15,000 rounds on MongoDB): keep it off
        // the runtime's worker threads, which forward client traffic.
        let (client_final, scram) = tokio::task::spawn_blocking(move || {
            let f = scram.client_final(&server_first);
            (f, scram)
        })
        .await
        .map_err(|e| self.auth(format!("the key derivation task failed: {e}")))?;
        let client_final = client_final.map_err(|reason| self.auth(reason))?;
        let cont = rawdoc! {
            "saslContinue": 1,
            "conversationId": conversation_id,
            "payload": binary(client_final.into_bytes()),
            "$db": db,
        };
        let reply = self.command(&cont).await?;
        let (_, server_final) = self.sasl_step(&reply)?;
        scram
            .verify_server_final(&server_final)
            .map_err(|reason| self.auth(reason))?;
        let mut done = reply.get_bool("done").unwrap_or(false);
        // A server that ignores skipEmptyExchange wants one empty round.
        let mut rounds = 0;
        while !done {
            rounds += 1;
            if rounds > 2 {
                return Err(self.auth("the server never said the conversation is done".into()));
            }
            let empty = rawdoc! {
                "saslContinue": 1,
                "conversationId": conversation_id,
                "payload": binary(Vec::new()),
                "$db": db,
            };
            let reply = self.command(&empty).await?;
            done = reply.get_bool("done").unwrap_or(false);
        }
        Ok(())
    }

    /// The conversation id and the server's payload text from a SASL reply.
    fn sasl_step(&self, reply: &RawDocument) -> Result<(i32, String), ClientError> {
        let id = reply
            .get("conversationId")
            .ok()
            .flatten()
            .and_then(mongotap_proto::command::as_i64)
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| self.auth("the reply has no conversationId".into()))?;
        let payload = match reply.get("payload").ok().flatten() {
            Some(RawBsonRef::Binary(b)) => b.bytes.to_vec(),
            Some(RawBsonRef::String(s)) => s.as_bytes().to_vec(),
            _ => return Err(self.auth("the reply has no payload".into())),
        };
        let text = String::from_utf8(payload)
            .map_err(|_| self.auth("the server's payload is not UTF-8".into()))?;
        Ok((id, text))
    }

    fn auth(&self, reason: String) -> ClientError {
        ClientError::Auth {
            addr: self.addr.clone(),
            reason,
        }
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// 24 random bytes, base64: the client's half of the SCRAM nonce.
pub(super) fn client_nonce() -> String {
    let mut bytes = [0u8; 24];
    // The OS random source does not fail on supported platforms; if it ever
    // does, a time-derived nonce still differs per attempt (the server adds
    // its own random half).
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        bytes[..16].copy_from_slice(&now);
    }
    B64.encode(bytes)
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    #[allow(clippy::expect_used, reason = "new_from_slice never fails for HMAC")]
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The client side of one SCRAM-SHA-256 conversation (RFC 5802 §3,
/// RFC 7677), without I/O, so the RFC's test vector can check it.
pub(super) struct Scram {
    password: String,
    client_nonce: String,
    /// "n=user,r=nonce": the client-first message without the GS2 header.
    client_first_bare: String,
    /// Computed with the client's proof; checked against the server's `v=`.
    server_signature: Option<[u8; 32]>,
}

/// RFC 7677 §4: fewer rounds than this make the salted password cheap to
/// brute-force, and a server asking for them is not to be trusted.
const MIN_ITERATIONS: u32 = 4096;

impl Scram {
    pub(super) fn new(username: &str, password: &str, client_nonce: &str) -> Scram {
        // RFC 5802 §5.1: ',' and '=' in the name are escaped.
        let user = username.replace('=', "=3D").replace(',', "=2C");
        Scram {
            password: saslprep(password),
            client_nonce: client_nonce.to_string(),
            client_first_bare: format!("n={user},r={client_nonce}"),
            server_signature: None,
        }
    }

    /// "n,,n=user,r=nonce": no channel binding, no authzid.
    pub(super) fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first message ("r=..,s=..,i=..") with the
    /// client-final message carrying the proof.
    pub(super) fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => return Err("the server requires an unsupported extension".into()),
                Some(("e", v)) => return Err(format!("the server refused: {v}")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("the server's first message has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() <= self.client_nonce.len() {
            return Err("the server's nonce does not extend the client's".into());
        }
        let salt = B64
            .decode(salt.ok_or("the server's first message has no salt")?)
            .map_err(|_| "the server's salt is not base64")?;
        let iterations: u32 = iterations
            .ok_or("the server's first message has no iteration count")?
            .parse()
            .map_err(|_| "the server's iteration count is not a number")?;
        if iterations < MIN_ITERATIONS {
            return Err(format!(
                "the server asks for {iterations} iterations, below the minimum of {MIN_ITERATIONS}"
            ));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        // "biws" is base64("n,,"), the GS2 header sent in client-first.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message ("v=signature").
    pub(super) fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        let expected = self
            .server_signature
            .ok_or("the server's final message came before the client's")?;
        for attr in server_final.split(',') {
            match attr.split_once('=') {
                Some(("e", v)) => return Err(format!("the server refused: {v}")),
                Some(("v", v)) => {
                    let got = B64
                        .decode(v)
                        .map_err(|_| "the server's signature is not base64")?;
                    return if got == expected {
                        Ok(())
                    } else {
                        Err(
                            "the server's signature does not match: it does not know the password"
                                .into(),
                        )
                    };
                }
                _ => {}
            }
        }
        Err("the server's final message has no signature".into())
    }
}

/// SASLprep (RFC 4013) of a password. ASCII passwords are unchanged; a
/// password SASLprep rejects is used as given (the server will refuse it).
fn saslprep(password: &str) -> String {
    if password.is_ascii() {
        return password.to_string();
    }
    stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_string())
}
