use super::tls_io::split_io;
use super::*;
use crate::observe::Observe;
use bson::rawdoc;
use mongotap_proto::{op_msg, DecodeError, MAX_MESSAGE_LEN};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Forwards every frame unchanged.
struct PassThrough;

impl Observe for PassThrough {
    fn observe(&mut self, _frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        Ok(None)
    }
}

/// Both ends of a TLS connection over an in-memory pipe that holds at
/// most `capacity` bytes in flight, like a socket buffer.
async fn tls_pair(
    capacity: usize,
) -> (
    tokio_rustls::server::TlsStream<DuplexStream>,
    tokio_rustls::client::TlsStream<DuplexStream>,
) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(ring.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(ring)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (a, b) = tokio::io::duplex(capacity);
    let name = ServerName::try_from("localhost").expect("name");
    let (s, c) = tokio::join!(
        tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(a),
        tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b)
    );
    (s.expect("server handshake"), c.expect("client handshake"))
}

/// Drivers close TLS connections without `close_notify`: that is an
/// ordinary EOF, not a failed connection.
#[tokio::test]
async fn tls_close_without_close_notify_is_eof() {
    let (server, client) = tls_pair(64 * 1024).await;
    let (mut read, _write) = split_io(server);
    drop(client);
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut byte))
        .await
        .expect("EOF in time")
        .expect("a close without close_notify reads as EOF, not an error");
    assert_eq!(n, 0);
}

/// A reply larger than the socket can take, but small enough for the
/// rest to fit in rustls' 64 KiB send buffer: `write_all` returns with
/// the tail still buffered. The client must still get the whole reply
/// although no further frame follows to push it out.
#[tokio::test]
async fn tls_tail_is_flushed_when_the_socket_was_full() {
    let reply = op_msg::encode(
        1,
        7,
        0,
        &rawdoc! { "ok": 1.0, "pad": "x".repeat(40_000) },
        &[],
    );
    let (server, mut client) = tls_pair(8 * 1024).await;
    // The upstream: one reply, then silence (kept open, so no EOF).
    let (mut upstream, source) = tokio::io::duplex(64 * 1024);
    upstream.write_all(&reply).await.expect("feed");
    let (_server_read, server_write) = tokio::io::split(server);
    let forward = tokio::spawn(async move {
        pipe(
            Side::Upstream,
            FrameReader::new(
                source,
                Side::Upstream,
                MAX_MESSAGE_LEN,
                Duration::from_secs(60),
            ),
            server_write,
            None,
            &mut PassThrough,
        )
        .await
    });
    // The client reads only once the pipe has filled the socket.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while got.len() < reply.len() {
            let n = client.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
    };
    let whole = tokio::time::timeout(Duration::from_secs(5), read).await;
    forward.abort();
    assert!(
        whole.is_ok(),
        "the end of the reply stayed in the TLS buffer: {} of {} bytes arrived",
        got.len(),
        reply.len()
    );
    assert_eq!(got, reply);
    drop(upstream);
}

/// Records each write call, to check how many syscalls a batch costs.
#[derive(Default)]
struct Writes(Vec<Vec<u8>>);

impl tokio::io::AsyncWrite for Writes {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.push(buf.to_vec());
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Replaces the frame with request id `id` by `with`.
struct Replace {
    id: i32,
    with: Vec<u8>,
}

impl Observe for Replace {
    fn observe(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        let id = i32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        Ok((id == self.id).then(|| self.with.clone()))
    }
}

/// Frames that arrive in one read leave in one write; a rewritten frame
/// is spliced in between the untouched bytes around it.
#[tokio::test]
async fn one_read_of_frames_is_one_write_and_a_rewrite_is_spliced_in() {
    let frames: Vec<Vec<u8>> = (1..=3)
        .map(|id| op_msg::encode(id, 0, 0, &rawdoc! { "ping": 1 }, &[]))
        .collect();
    let rewritten = op_msg::encode(2, 0, 0, &rawdoc! { "ping": 1, "maxTimeMS": 5 }, &[]);
    async fn run<O: Observe>(frames: &[Vec<u8>], observer: &mut O) -> Vec<Vec<u8>> {
        let (mut peer, source) = tokio::io::duplex(64 * 1024);
        peer.write_all(&frames.concat()).await.expect("feed");
        drop(peer);
        let mut out = Writes::default();
        let reader = FrameReader::new(
            source,
            Side::Upstream,
            MAX_MESSAGE_LEN,
            Duration::from_secs(60),
        );
        pipe(Side::Upstream, reader, &mut out, None, observer)
            .await
            .expect("clean EOF");
        out.0
    }
    let writes = run(&frames, &mut PassThrough).await;
    assert_eq!(writes, vec![frames.concat()]);
    let mut replace = Replace {
        id: 2,
        with: rewritten.clone(),
    };
    let writes = run(&frames, &mut replace).await;
    assert_eq!(
        writes,
        vec![frames[0].clone(), rewritten, frames[2].clone()]
    );
}
