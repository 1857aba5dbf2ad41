//! Binding the proxy's and the admin endpoint's listening sockets, with
//! errors that name the setting to change. "Address already in use (os
//! error 98)" alone does not say which of mongotap's two ports collided,
//! nor where that port is configured.

use std::io;
use thiserror::Error;
use tokio::net::TcpListener;

/// Where an address came from, as a user would change it.
#[derive(Debug, Clone, Copy)]
pub enum Setting {
    /// proxy.listen, or --listen
    Proxy,
    /// admin.listen, or --admin
    Admin,
}

impl Setting {
    fn names(self) -> &'static str {
        match self {
            Setting::Proxy => "proxy.listen, or --listen",
            Setting::Admin => "admin.listen, or --admin",
        }
    }
}

#[derive(Debug, Error)]
#[error("cannot listen on {addr} ({}): {}", setting.names(), reason(error))]
pub struct ListenError {
    addr: String,
    setting: Setting,
    // Not `#[source]`: the message already says it in words, and the error
    // line in main.rs would otherwise repeat the OS's text after it.
    error: io::Error,
}

/// Binds `addr` (HOST:PORT; a name binds the first address it resolves to
/// that can be bound, as `TcpListener::bind` does).
pub async fn bind(addr: &str, setting: Setting) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|error| ListenError {
        addr: addr.to_string(),
        setting,
        error,
    })
}

/// The OS error in words, with what to do where there is one thing to do.
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".into(),
        io::ErrorKind::AddrNotAvailable => {
            "no network interface on this machine has that address".into()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        _ => e.to_string(),
    }
}
