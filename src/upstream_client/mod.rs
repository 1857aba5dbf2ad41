//! A minimal MongoDB client over one connection, for mongotap's own
//! commands (auto-explain; replay later): the hello handshake, OP_MSG round
//! trips and SCRAM-SHA-256 authentication. No pooling, no retries, no
//! compression: one request at a time on one stream.
//!
//! Frames are cut with [`mongotap_proto::decode`], so a reply longer than
//! the server's 48 MB limit is refused before anything is allocated for it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bson::raw::RawBsonRef;
use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use mongotap_proto::{op_msg, DecodeError, OpCode, ReplyView, MAX_MESSAGE_LEN};
use sha2::{Digest, Sha256};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// What went wrong talking to the upstream. Every variant is about the
/// upstream side (or the conversation with it) and names its address.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {addr} did not finish connecting and answering hello within {ms} ms")]
    ConnectTimeout { addr: String, ms: u64 },
    #[error("upstream {addr} did not answer {command} within {ms} ms")]
    Timeout {
        addr: String,
        command: String,
        ms: u64,
    },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to upstream {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {addr} closed the connection")]
    Closed { addr: String },
    #[error("upstream {addr} sent a malformed reply: {source}")]
    Decode { addr: String, source: DecodeError },
    #[error("upstream {addr} sent an unexpected reply: {what}")]
    Unexpected { addr: String, what: String },
    #[error("{command} failed on upstream {addr}: {code} {code_name}: {errmsg}")]
    Command {
        addr: String,
        command: String,
        code: i32,
        code_name: String,
        errmsg: String,
    },
    #[error("SCRAM-SHA-256 authentication with upstream {addr} failed: {reason}")]
    Auth { addr: String, reason: String },
    #[error("a previous command on this connection to {addr} was cancelled mid-flight; the connection cannot be reused")]
    Poisoned { addr: String },
}

impl ClientError {
    /// The server's error code, when the server answered `ok: 0`.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClientError::Command { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn code_name(&self) -> Option<&str> {
        match self {
            ClientError::Command { code_name, .. } => Some(code_name),
            _ => None,
        }
    }
}

/// Any byte stream the client can run over: plain TCP, TLS, or an
/// in-memory pipe in tests.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The TLS connector for the upstream and the server name it verifies
/// (what `tls::Tls::connector` holds).
pub type TlsUpstream = (TlsConnector, ServerName<'static>);

/// One connection to a MongoDB server, after the hello handshake.
pub struct UpstreamClient {
    stream: Box<dyn Stream>,
    /// Bytes read past the last whole frame.
    buf: BytesMut,
    next_request_id: i32,
    /// For error messages.
    addr: String,
    /// Set while a command is between its write and its reply: if the
    /// future is dropped there, the stream is out of step and unusable.
    in_flight: bool,
}

impl UpstreamClient {
    /// Connects over TCP (then TLS when `tls` is given) and sends the hello
    /// handshake; `timeout` bounds all of it.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        tls: Option<&TlsUpstream>,
    ) -> Result<Self, ClientError> {
        Self::connect_as(addr, timeout, tls, "mongotap").await
    }

    /// `connect` with another application name in the handshake, so the
    /// server's logs and `$currentOp` tell mongotap's connections apart
    /// (the health probe's from auto-explain's).
    pub async fn connect_as(
        addr: &str,
        timeout: Duration,
        tls: Option<&TlsUpstream>,
        app: &str,
    ) -> Result<Self, ClientError> {
        let timed_out = || ClientError::ConnectTimeout {
            addr: addr.to_string(),
            ms: timeout.as_millis() as u64,
        };
        tokio::time::timeout(timeout, async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
            // Small request/reply exchanges: do not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|source| ClientError::Tls {
                            addr: addr.to_string(),
                            source,
                        })?,
                ),
            };
            let mut client = UpstreamClient::new(stream, addr);
            client.hello(app).await?;
            Ok(client)
        })
        .await
        .map_err(|_| timed_out())?
    }

    fn new(stream: Box<dyn Stream>, addr: &str) -> Self {
        UpstreamClient {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            next_request_id: 1,
            addr: addr.to_string(),
            in_flight: false,
        }
    }

    /// The handshake: says who is connecting, so the server's logs and
    /// `$currentOp` show mongotap's own operations as such.
    async fn hello(&mut self, app: &str) -> Result<RawDocumentBuf, ClientError> {
        let hello = rawdoc! {
            "hello": 1,
            "client": {
                "application": { "name": app },
                "driver": { "name": "mongotap", "version": env!("CARGO_PKG_VERSION") },
                "os": { "type": std::env::consts::OS },
            },
            "$db": "admin",
        };
        self.command(&hello).await
    }

    /// Sends one command as OP_MSG and returns the reply body. An `ok: 0`
    /// reply becomes [`ClientError::Command`]. The body must carry `$db`.
    ///
    /// Not cancel-safe: if the future is dropped after the request went
    /// out, later calls fail with [`ClientError::Poisoned`].
    pub async fn command(&mut self, body: &RawDocument) -> Result<RawDocumentBuf, ClientError> {
        if self.in_flight {
            return Err(ClientError::Poisoned {
                addr: self.addr.clone(),
            });
        }
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        let frame = op_msg::encode(request_id, 0, 0, body, &[]);
        self.in_flight = true;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|source| self.io(source))?;
        let reply = self.read_reply(request_id).await?;
        self.in_flight = false;
        let name = body
            .iter()
            .next()
            .and_then(|r| r.ok())
            .map_or("command", |(k, _)| k.as_str());
        check_ok(&self.addr, name, reply)
    }

    /// Reads the next whole frame, which must be the OP_MSG reply to
    /// `request_id` (one request is outstanding at a time).
    async fn read_reply(&mut self, request_id: i32) -> Result<RawDocumentBuf, ClientError> {
        loop {
            let decoded =
                mongotap_proto::decode(&mut self.buf, MAX_MESSAGE_LEN).map_err(|source| {
                    ClientError::Decode {
                        addr: self.addr.clone(),
                        source,
                    }
                })?;
            let Some(frame) = decoded else {
                let n = self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|source| self.io(source))?;
                if n == 0 {
                    return Err(ClientError::Closed {
                        addr: self.addr.clone(),
                    });
                }
                continue;
            };
            if frame.header.response_to != request_id {
                return Err(self.unexpected(format!(
                    "responseTo {} does not match request {request_id}",
                    frame.header.response_to
                )));
            }
            if frame.header.op_code != OpCode::Msg {
                return Err(self.unexpected(format!(
                    "opcode {:?} where OP_MSG was expected",
                    frame.header.op_code
                )));
            }
            let msg = op_msg::parse(&frame.bytes).map_err(|source| ClientError::Decode {
                addr: self.addr.clone(),
                source,
            })?;
            if msg.more_to_come() {
                return Err(self.unexpected("moreToCome on a reply to a plain request".into()));
            }
            return Ok(msg.body.to_owned());
        }
    }

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

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn unexpected(&self, what: String) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr.clone(),
            what,
        }
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

/// Turns an `ok: 0` reply into an error with the server's code and message.
fn check_ok(
    addr: &str,
    command: &str,
    reply: RawDocumentBuf,
) -> Result<RawDocumentBuf, ClientError> {
    let view = ReplyView::parse(&reply).map_err(|source| ClientError::Decode {
        addr: addr.to_string(),
        source,
    })?;
    if view.ok == Some(true) {
        return Ok(reply);
    }
    let code = view.code.unwrap_or(0);
    Err(ClientError::Command {
        addr: addr.to_string(),
        command: command.to_string(),
        code,
        code_name: view
            .code_name
            .map(str::to_string)
            .unwrap_or_else(|| crate::events::code_name(code).to_string()),
        errmsg: match view.ok {
            None => "the reply has no `ok` field".to_string(),
            _ => view.errmsg.unwrap_or("").to_string(),
        },
    })
}

/// 24 random bytes, base64: the client's half of the SCRAM nonce.
fn client_nonce() -> String {
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
struct Scram {
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
    fn new(username: &str, password: &str, client_nonce: &str) -> Scram {
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
    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first message ("r=..,s=..,i=..") with the
    /// client-final message carrying the proof.
    fn client_final(&mut self, server_first: &str) -> Result<String, String> {
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
    fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests;
