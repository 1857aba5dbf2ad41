//! How bench-load reaches the target: TCP, optionally TLS with full
//! handshakes, then hello.

use super::{handshake, Conn};
use anyhow::Context;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// TLS settings shared by every connection.
pub(super) struct Tls {
    connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must be valid for.
    name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    pub(super) fn new(ca: &str, target: &str) -> anyhow::Result<Tls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {ca}"))? {
            roots.add(cert.with_context(|| format!("parsing {ca}"))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection makes a full handshake: the expensive case, and
        // what a restarted application fleet does.
        config.resumption = rustls::client::Resumption::disabled();
        let host = target
            .rsplit_once(':')
            .map_or(target, |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']');
        let name = ServerName::try_from(host.to_string())
            .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// Opens connections to the target, in plaintext or over TLS.
pub(super) struct Dialer {
    pub(super) target: String,
    pub(super) tls: Option<Tls>,
}

impl Dialer {
    /// Connects, completes the TLS handshake if any, and says hello.
    pub(super) async fn connect(&self) -> anyhow::Result<Conn> {
        let target = &self.target;
        let tcp = TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        tcp.set_nodelay(true)?;
        let sock = match &self.tls {
            None => Sock::Plain(tcp),
            Some(tls) => Sock::Tls(Box::new(
                tls.connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {target}"))?,
            )),
        };
        handshake(sock).await.context("hello")
    }
}

/// Either kind of connection. A `match` per call keeps plaintext runs free
/// of dynamic dispatch.
pub(super) enum Sock {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Sock::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Plain(s) => Pin::new(s).poll_flush(cx),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
