//! The two ends' streams: TLS accepted from clients and TLS (or plain TCP)
//! to the upstream, each split into boxed halves so plaintext and TLS
//! share one forwarding loop.

use crate::proxy::error::SessionError;
use crate::settings::tls::Tls;
use crate::shared::Shared;
use crate::topology::Member;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Either side's stream, boxed so plaintext and TLS share one forwarding
/// loop (the dynamic call per read is noise next to the syscall).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Splits a plaintext connection.
pub fn split_tcp(stream: TcpStream) -> (BoxRead, BoxWrite) {
    let (r, w) = stream.into_split();
    (Box::new(r), Box::new(w))
}

/// Splits a TLS stream.
pub fn split_io<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (BoxRead, BoxWrite) {
    let (r, w) = tokio::io::split(stream);
    (Box::new(CloseNotifyOptional(r)), Box::new(w))
}

/// Reads a TLS stream, taking a close without TLS `close_notify` as a plain
/// EOF. Drivers close that way all the time, and so does mongotap. Every
/// MongoDB frame carries its own length, so a frame cut short is still
/// reported as truncated by the `FrameReader`.
struct CloseNotifyOptional<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for CloseNotifyOptional<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Accepts TLS from a client. A client that sends anything but a TLS
/// record first is told apart from a failed handshake: it is speaking
/// plaintext to a TLS port.
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    client: TcpStream,
) -> Result<(BoxRead, BoxWrite), String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, client.peek(&mut first)).await {
        Ok(Ok(0)) => return Err("client closed before sending anything".into()),
        Ok(Ok(_)) if first[0] != 0x16 => {
            return Err(
                "the client sent plaintext to a TLS port: connect with tls=true (and tlsCAFile), or point it at a plaintext listener".into(),
            )
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("client sent nothing within the TLS handshake timeout".into()),
    }
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(client)).await {
        Ok(Ok(stream)) => Ok(split_io(stream)),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// Connects to the upstream: `proxy.upstream`, or in replica-set mode the
/// member the client's listener stands for, checked by TLS under that
/// member's own host name.
pub async fn connect_upstream(
    shared: &Shared,
    tls: &Tls,
    member: Option<&Member>,
) -> Result<(BoxRead, BoxWrite), SessionError> {
    let addr = member.map_or(&shared.config.proxy.upstream, |m| &m.upstream);
    let ms = shared.config.proxy.connect_timeout_ms;
    let deadline = Duration::from_millis(ms);
    let tcp = match tokio::time::timeout(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(SessionError::Connect {
                addr: addr.clone(),
                source,
            })
        }
        Err(_) => {
            return Err(SessionError::ConnectTimeout {
                addr: addr.clone(),
                ms,
            })
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some((connector, name)) = &tls.connector else {
        return Ok(split_tcp(tcp));
    };
    let member_name;
    let name = match member {
        None => name,
        Some(m) => {
            member_name = ServerName::try_from(m.host().to_string()).map_err(|_| {
                SessionError::UpstreamName {
                    addr: addr.clone(),
                    name: m.host().to_string(),
                }
            })?;
            &member_name
        }
    };
    match tokio::time::timeout(deadline, connector.connect(name.clone(), tcp)).await {
        Ok(Ok(stream)) => Ok(split_io(stream)),
        Ok(Err(source)) => Err(SessionError::UpstreamTls {
            addr: addr.clone(),
            name: name.to_str().into_owned(),
            source,
        }),
        Err(_) => Err(SessionError::ConnectTimeout {
            addr: addr.clone(),
            ms,
        }),
    }
}
