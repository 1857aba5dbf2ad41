//! Logging a replay connection in with SCRAM-SHA-256, using
//! [`UpstreamClient`]'s implementation rather than a second copy of it.
//!
//! That client connects by address and keeps its stream to itself, while
//! replay must send raw frames on the connection it logged in. So the
//! login runs through a one-shot relay on loopback: the client connects to
//! the relay, the relay forwards both ways to replay's own connection to
//! the target, and when the login is over the relay stops and hands that
//! connection back, authenticated. The client's hello is the connection's
//! handshake. Nothing is in flight when the relay stops: the login ends
//! with the client having read the server's last reply.

use super::{Credentials, ReplayError};
use crate::upstream_client::UpstreamClient;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Says hello and logs in on `server`; returns it ready for commands.
pub async fn login(
    server: TcpStream,
    target: &str,
    creds: &Credentials,
    timeout: Duration,
) -> Result<TcpStream, ReplayError> {
    let io = |source| ReplayError::Io {
        target: target.to_string(),
        source,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
    let relay_addr = listener.local_addr().map_err(io)?.to_string();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let client = async {
        let result = async {
            let mut client = UpstreamClient::connect(&relay_addr, timeout, None).await?;
            client
                .auth_scram_sha256(&creds.username, &creds.password, &creds.db)
                .await
        }
        .await;
        let _ = done_tx.send(());
        result
    };
    let (auth, server) = tokio::join!(client, relay(listener, server, done_rx));
    // The client's errors name the relay; the user knows the target.
    auth.map_err(|e| ReplayError::Auth {
        target: target.to_string(),
        reason: e.to_string().replace(&relay_addr, target),
    })?;
    server.map_err(io)
}

/// Forwards between the one client that connects to `listener` and
/// `server` until `done`, then returns `server`.
async fn relay(
    listener: TcpListener,
    mut server: TcpStream,
    mut done: oneshot::Receiver<()>,
) -> std::io::Result<TcpStream> {
    // Cancel-safe: accept and a oneshot receive lose nothing when the
    // other branch wins.
    let mut local = tokio::select! {
        accepted = listener.accept() => accepted?.0,
        _ = &mut done => return Ok(server),
    };
    drop(listener);
    let _ = local.set_nodelay(true);
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        // Cancel-safe: `read` on a TcpStream consumes nothing unless it
        // completes, and each write runs to completion inside its branch.
        tokio::select! {
            n = local.read(&mut up) => {
                let n = n?;
                if n == 0 {
                    return Ok(server);
                }
                server.write_all(&up[..n]).await?;
            }
            n = server.read(&mut down) => {
                let n = n?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                local.write_all(&down[..n]).await?;
            }
            _ = &mut done => return Ok(server),
        }
    }
}
