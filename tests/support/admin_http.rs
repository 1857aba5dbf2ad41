//! The admin endpoint's routes that take the bearer token, over
//! `support::http_request`, and its `/events` stream.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `method path` with `Authorization: Bearer token` when `token` is given;
/// returns the status code and body.
pub fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    crate::support::http_request(addr, method, path, token)
}

/// GET with the token, parsed as JSON.
pub fn get_json(addr: SocketAddr, path: &str, token: &str) -> serde_json::Value {
    let (code, body) = request(addr, "GET", path, Some(token));
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// Subscribes to `/events` with the token; each server-sent event's data,
/// parsed as JSON, arrives on the receiver (with its SSE event name under
/// `"_sse_event"` when it has one). A thread reads until the stream ends.
pub fn sse(addr: SocketAddr, token: &str) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::BufRead;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect admin {addr}: {e}"));
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("write request");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut name = None;
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let Ok(mut v) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if let Some(n) = name.take() {
                    v["_sse_event"] = n.into();
                }
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next event from `rx` matching `pred`, within `timeout`.
pub fn next_event(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(e) => panic!("no matching event on /events within {timeout:?}: {e}"),
        }
    }
}
