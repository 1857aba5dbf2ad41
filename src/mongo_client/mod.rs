//! mongotap's own MongoDB client, over one connection: the hello
//! handshake, commands, SCRAM-SHA-256, and raw frames with their replies,
//! moreToCome streams included. The health probe, auto-explain and replay
//! all use it. No pooling, no retries, no compression: one request at a
//! time on one stream.
//!
//! - `frames`: requests out, replies in; the one framing loop.
//! - `hello`: the hello documents.
//! - `scram`: SCRAM-SHA-256.
//! - `error`: [`ClientError`].

mod error;
mod frames;
mod hello;
mod scram;

pub use error::ClientError;

use bson::{RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use error::check_ok;
use frames::State;
use mongotap_proto::{op_msg, OpCode};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Any byte stream the client can run over: plain TCP, TLS, or an
/// in-memory pipe in tests.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The TLS connector for the upstream and the server name it verifies
/// (what `tls::Tls::connector` holds).
pub type TlsUpstream = (TlsConnector, ServerName<'static>);

/// One connection to a MongoDB server.
pub struct UpstreamClient {
    stream: Box<dyn Stream>,
    /// Bytes read past the last whole frame.
    buf: BytesMut,
    /// The id of the last request sent (0 before the first): the next goes
    /// out under the one after it, and replies to earlier ones are strays.
    last_request_id: i32,
    /// For error messages.
    addr: String,
    /// Whether a reply is awaited, or a write was cut short.
    state: State,
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
    /// (the health probe's from auto-explain's and replay's).
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
            let mut client = UpstreamClient::from_stream(stream, addr);
            client.handshake(app).await?;
            Ok(client)
        })
        .await
        .map_err(|_| timed_out())?
    }

    /// Wraps a stream that is already open (TCP, TLS, or a test's pipe)
    /// to the server at `addr`, which errors name. Nothing is sent: the
    /// caller says hello with [`handshake`](Self::handshake).
    pub fn from_stream(stream: Box<dyn Stream>, addr: &str) -> Self {
        UpstreamClient {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            last_request_id: 0,
            addr: addr.to_string(),
            state: State::Idle,
        }
    }

    /// The connection's first hello, which says who is connecting.
    pub async fn handshake(&mut self, app: &str) -> Result<RawDocumentBuf, ClientError> {
        self.command(&hello::handshake(app)).await
    }

    /// A later hello: the cheapest command every server answers.
    pub async fn hello(&mut self) -> Result<RawDocumentBuf, ClientError> {
        self.command(&hello::again()).await
    }

    /// Sends one command as OP_MSG and returns the reply body. An `ok: 0`
    /// reply becomes [`ClientError::Command`]. The body must carry `$db`.
    ///
    /// Not cancel-safe: if the future is dropped after the request went
    /// out, later calls fail with [`ClientError::Poisoned`].
    pub async fn command(&mut self, body: &RawDocument) -> Result<RawDocumentBuf, ClientError> {
        let mut request = op_msg::encode(0, 0, 0, body, &[]);
        self.send_frame(&mut request).await?;
        let reply = self
            .read_reply(|doc| doc.to_owned())
            .await?
            .ok_or_else(|| self.unexpected("no reply awaited after a command".into()))?;
        if reply.op_code != OpCode::Msg {
            return Err(self.unexpected(format!(
                "opcode {:?} where OP_MSG was expected",
                reply.op_code
            )));
        }
        if reply.more_to_come {
            return Err(self.unexpected("moreToCome on a reply to a plain request".into()));
        }
        let name = body
            .iter()
            .next()
            .and_then(|r| r.ok())
            .map_or("command", |(k, _)| k.as_str());
        check_ok(&self.addr, name, reply.value)
    }

    /// The address errors name.
    pub fn addr(&self) -> &str {
        &self.addr
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

    fn decode(&self, source: mongotap_proto::DecodeError) -> ClientError {
        ClientError::Decode {
            addr: self.addr.clone(),
            source,
        }
    }

    fn poisoned(&self) -> ClientError {
        ClientError::Poisoned {
            addr: self.addr.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
