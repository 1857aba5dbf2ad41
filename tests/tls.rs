//! TLS on both sides (issue 7), against the real binary: real drivers
//! (pymongo and the Rust driver) with `tls=true&tlsCAFile=...`, a real
//! FerretDB listening with TLS, mutual TLS, bad upstream certificates,
//! wrong-protocol clients and certificate reload on SIGHUP.
//!
//! Every certificate is made by the test itself with rcgen and written as
//! PEM into the test's own temporary directory, so nothing depends on the
//! machine's trust store or on files that expire.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::event::cmap::CmapEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use mongotap_proto::{op_msg, MAX_MESSAGE_LEN};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use scripted::{default_reply, reply, Received, Scripted, Step};
use support::{ferretdb_path, free_port, python, signal, unique_db, Ferret, Mongotap};

/// How long a driver may look for a server that is there.
const SELECT: Duration = Duration::from_secs(10);
/// How long a driver looks for a server that is expected to refuse it.
const SELECT_REFUSED: Duration = Duration::from_secs(2);
/// How long mongotap may take to log an event after its cause.
const EVENT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A throwaway certificate authority. What it signs is written as PEM files
/// next to its own certificate.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM): what a peer puts in tlsCAFile or `ca`.
    pem: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key as PEM files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate then key in one file: the drivers' tlsCertificateKeyFile.
    combined: PathBuf,
}

/// What a leaf certificate is for, and whether it is still valid.
#[derive(Clone, Copy)]
enum Leaf {
    Server,
    Client,
    ExpiredServer,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).expect("write CA");
        Ca {
            issuer: Issuer::new(params, key),
            pem,
            dir: dir.to_owned(),
        }
    }

    /// Signs a leaf certificate for `names` (DNS names or IP addresses) and
    /// writes it as `<file>.pem`, `<file>.key` and `<file>-combined.pem`.
    fn issue(&self, file: &str, common_name: &str, names: &[&str], leaf: Leaf) -> Identity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match leaf {
            Leaf::Server | Leaf::ExpiredServer => ExtendedKeyUsagePurpose::ServerAuth,
            Leaf::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        if let Leaf::ExpiredServer = leaf {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let id = Identity {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            combined: self.dir.join(format!("{file}-combined.pem")),
        };
        std::fs::write(&id.cert, cert.pem()).expect("write cert");
        std::fs::write(&id.key, key.serialize_pem()).expect("write key");
        std::fs::write(
            &id.combined,
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .expect("write combined");
        id
    }

    /// A server certificate valid for how the tests reach a local server.
    fn server(&self, file: &str) -> Identity {
        self.issue(file, "localhost", &["localhost", "127.0.0.1"], Leaf::Server)
    }

    fn client(&self, file: &str, common_name: &str) -> Identity {
        self.issue(file, common_name, &[], Leaf::Client)
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mongotap-tls-")
        .tempdir()
        .expect("create temp dir")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

// ---------------------------------------------------------------------------
// Config files and the proxy
// ---------------------------------------------------------------------------

/// `[tls.client]` presenting `id`, requiring client certificates signed by
/// `client_ca` when given.
fn client_section(id: &Identity, client_ca: Option<&Ca>) -> String {
    let mut s = format!(
        "[tls.client]\ncert = \"{}\"\nkey = \"{}\"\n",
        path(&id.cert),
        path(&id.key)
    );
    if let Some(ca) = client_ca {
        s += &format!("ca = \"{}\"\n", path(&ca.pem));
    }
    s
}

/// `[tls.upstream]` trusting `ca`, verifying `server_name`, presenting
/// `identity` when given.
fn upstream_section(ca: &Ca, server_name: &str, identity: Option<&Identity>) -> String {
    let mut s = format!(
        "[tls.upstream]\nca = \"{}\"\nserver_name = \"{server_name}\"\n",
        path(&ca.pem)
    );
    if let Some(id) = identity {
        s += &format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            path(&id.cert),
            path(&id.key)
        );
    }
    s
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("mongotap.toml");
    std::fs::write(&file, text).expect("write config");
    file
}

/// The real binary in front of `upstream` with the given config file.
fn proxy(upstream: SocketAddr, config: &Path) -> Mongotap {
    Mongotap::start_with(upstream, &["--config", path(config)])
}

// ---------------------------------------------------------------------------
// Drivers and raw clients
// ---------------------------------------------------------------------------

/// A driver URI for one server over TLS, trusting `ca` and presenting
/// `identity` when given.
fn tls_uri(addr: SocketAddr, ca: &Ca, identity: Option<&Identity>) -> String {
    let mut uri = format!(
        "mongodb://{addr}/?directConnection=true&tls=true&tlsCAFile={}",
        path(&ca.pem)
    );
    if let Some(id) = identity {
        uri += &format!("&tlsCertificateKeyFile={}", path(&id.combined));
    }
    uri
}

async fn driver(uri: &str, select: Duration) -> Client {
    let mut opts = ClientOptions::parse(uri).await.expect("parse URI");
    opts.app_name = Some("mongotap-tests-tls".to_owned());
    opts.server_selection_timeout = Some(select);
    Client::with_options(opts).expect("client")
}

async fn ping(client: &Client) -> mongodb::error::Result<()> {
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map(|_| ())
}

/// What the Rust workload saw; identical whichever way the bytes travelled.
#[derive(Debug, PartialEq)]
struct Summary {
    inserted: usize,
    /// Sorted, fetched in batches of 3 so getMore travels too.
    found: Vec<Document>,
    grouped: Vec<Document>,
    modified: u64,
    count: u64,
}

async fn rust_workload(uri: &str, db: &str) -> Summary {
    let client = driver(uri, SELECT).await;
    let coll = client.database(db).collection::<Document>("items");
    let docs: Vec<Document> = (0..20)
        .map(|i| doc! { "_id": i, "n": i, "grp": i % 3, "name": format!("doc{i}") })
        .collect();
    let inserted = coll
        .insert_many(docs)
        .await
        .expect("insert_many")
        .inserted_ids
        .len();
    let modified = coll
        .update_many(doc! { "grp": 0 }, doc! { "$inc": { "n": 100 } })
        .await
        .expect("update_many")
        .modified_count;
    let found: Vec<Document> = coll
        .find(doc! { "n": { "$gte": 2 } })
        .sort(doc! { "_id": 1 })
        .batch_size(3)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("find cursor");
    let grouped: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$group": { "_id": "$grp", "total": { "$sum": "$n" } } },
            doc! { "$sort": { "_id": 1 } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("aggregate cursor");
    let count = coll.count_documents(doc! {}).await.expect("count");
    client.shutdown().await;
    Summary {
        inserted,
        found,
        grouped,
        modified,
        count,
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certs(file: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(file)
        .expect("open PEM")
        .collect::<Result<_, _>>()
        .expect("parse PEM")
}

/// A raw rustls client config trusting only `ca`.
fn raw_client_config(ca: &Ca, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&ca.pem) {
        roots.add(c).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                pem_certs(&id.cert),
                PrivateKeyDer::from_pem_file(&id.key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

type RawTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection made by hand, for what a driver hides: which connection
/// a command travels on, and exactly when bytes are read.
async fn raw_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<RawTls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Sends one OP_MSG command on `stream` and reads its reply body.
async fn raw_command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    body: &RawDocumentBuf,
) -> std::io::Result<RawDocumentBuf> {
    let request = op_msg::encode(scripted::next_id(), 0, 0, body, &[]);
    stream.write_all(&request).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if let Some(frame) =
            mongotap_proto::decode(&mut buf, MAX_MESSAGE_LEN).map_err(std::io::Error::other)?
        {
            let msg = op_msg::parse(&frame.bytes).map_err(std::io::Error::other)?;
            return Ok(msg.body.to_owned());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn hello() -> RawDocumentBuf {
    rawdoc! { "hello": 1, "$db": "admin" }
}

fn is_ok(reply: &RawDocumentBuf) -> bool {
    matches!(reply.get_f64("ok"), Ok(ok) if ok == 1.0) || matches!(reply.get_i32("ok"), Ok(1))
}

/// The `decode_error` event whose reason contains `needle`, waiting for it.
async fn decode_error_containing(tap: &Mongotap, needle: &str) -> Value {
    event_containing(tap, "decode_error", "reason", needle).await
}

/// The first `event` whose `field` contains `needle`, within `EVENT`.
async fn event_containing(tap: &Mongotap, event: &str, field: &str, needle: &str) -> Value {
    let deadline = Instant::now() + EVENT;
    loop {
        let events = tap.events(event);
        if let Some(e) = events
            .iter()
            .find(|e| e[field].as_str().is_some_and(|s| s.contains(needle)))
        {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no `{event}` event whose {field} contains {needle:?} within {EVENT:?}; got {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drivers close TLS connections without a TLS close_notify; mongotap must
/// take that as an ordinary close, not log every disconnect as a failure.
async fn assert_clean_closes(tap: &Mongotap) {
    // The drivers have shut down; give mongotap a moment to see the closes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed: Vec<Value> = tap
        .logs()
        .into_iter()
        .filter(|l| {
            l["message"] == "connection failed"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("close_notify"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "ordinary disconnects logged as failures: {failed:#?}"
    );
}

// ---------------------------------------------------------------------------
// Upstreams that speak TLS
// ---------------------------------------------------------------------------

/// FerretDB serving TLS with the given certificate (and requiring client
/// certificates signed by `client_ca`, when given), killed on drop.
struct TlsFerret {
    child: Child,
    /// The TLS listener.
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsFerret {
    fn start(id: &Identity, client_ca: Option<&Ca>) -> TlsFerret {
        let dir = tempfile::Builder::new()
            .prefix("mongotap-ferretdb-tls-")
            .tempdir()
            .expect("FerretDB temp dir");
        let log_path = dir.path().join("ferretdb.log");
        // free_port() can lose a race with a parallel test: try fresh ports.
        for _ in 0..3 {
            let (port, plain) = (free_port(), free_port());
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("open ferretdb.log");
            let mut cmd = Command::new(ferretdb_path());
            cmd.arg("--handler=sqlite")
                .arg(format!("--sqlite-url=file:{}/", dir.path().display()))
                .arg(format!("--state-dir={}", dir.path().display()))
                .arg(format!("--listen-addr=127.0.0.1:{plain}"))
                .arg(format!("--listen-tls=127.0.0.1:{port}"))
                .arg(format!("--listen-tls-cert-file={}", id.cert.display()))
                .arg(format!("--listen-tls-key-file={}", id.key.display()))
                .arg("--debug-addr=127.0.0.1:0")
                .arg("--telemetry=disable")
                .arg("--log-level=warn");
            if let Some(ca) = client_ca {
                cmd.arg(format!("--listen-tls-ca-file={}", ca.pem.display()));
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn ferretdb");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return TlsFerret { child, port, dir };
                }
                if child.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "FerretDB with TLS did not start\n--- ferretdb.log ---\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ferretdb.log")).unwrap_or_default()
    }
}

impl Drop for TlsFerret {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- ferretdb.log ---\n{}", self.log());
        }
    }
}

/// An in-process TLS server presenting `id` that only handshakes: all a
/// test needs to see what mongotap makes of a certificate.
async fn handshake_only_server(id: &Identity) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            pem_certs(&id.cert),
            PrivateKeyDer::from_pem_file(&id.key).expect("key"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The client (mongotap) is expected to abort the handshake.
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut sink = [0u8; 1024];
                    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------------------
// 1. Drivers with tls=true in front of a real FerretDB
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_driver_over_client_tls_matches_direct() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let server = ca.server("proxy-server");
    let ferret = Ferret::start();
    let tap = proxy(
        ferret.addr(),
        &write_config(dir.path(), &client_section(&server, None)),
    );

    let direct = rust_workload(&ferret.uri(), &unique_db("tls_rust_direct")).await;
    let proxied_db = unique_db("tls_rust_proxied");
    let proxied = rust_workload(&tls_uri(tap.listen, &ca, None), &proxied_db).await;

    assert_eq!(direct.inserted, 20);
    assert_eq!(direct.found.len(), 19);
    assert_eq!(direct.grouped.len(), 3);
    assert_eq!(direct.modified, 7);
    assert_eq!(direct.count, 20);
    assert_eq!(direct, proxied, "results over TLS through mongotap differ");

    // The TLS traffic was decoded, not just relayed: mongotap saw the finds.
    // Latency samples are published in batches, so poll for them.
    let deadline = Instant::now() + EVENT;
    loop {
        let (status, stats) = tap.admin_get("/stats");
        assert_eq!(status, 200);
        let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
        let seen = stats["commands"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["command"] == "find" && c["db"] == proxied_db.as_str())
        });
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no find for {proxied_db} in /stats: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tap.events("decode_error").is_empty());
    assert_clean_closes(&tap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_over_client_tls_matches_direct() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let server = ca.server("proxy-server");
    let ferret = Ferret::start();
    let tap = proxy(
        ferret.addr(),
        &write_config(dir.path(), &client_section(&server, None)),
    );

    let direct = python("workload.py", &[&ferret.uri(), &unique_db("tls_py_direct")]).await;
    let uri = tls_uri(tap.listen, &ca, None);
    let proxied = python("workload.py", &[&uri, &unique_db("tls_py_proxied")]).await;

    assert_eq!(direct["inserted"], 30, "{direct}");
    assert_eq!(direct["final_count"], 21, "{direct}");
    assert_eq!(direct, proxied, "pymongo results over TLS differ");
    // The duplicate-key insert was seen inside the TLS stream.
    tap.wait_for_event_async("failed", EVENT).await;
    assert!(tap.events("decode_error").is_empty());
    assert_clean_closes(&tap).await;
}

// ---------------------------------------------------------------------------
// 2. mongotap to FerretDB over TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_to_ferretdb() {
    let dir = tempdir();
    let db_ca = Ca::new(dir.path(), "db");
    let ferret = TlsFerret::start(&db_ca.server("ferret"), None);
    let plain_tap = proxy(
        ferret.addr(),
        &write_config(dir.path(), &upstream_section(&db_ca, "localhost", None)),
    );

    let summary = rust_workload(&plain_tap.uri(), &unique_db("tls_upstream_rust")).await;
    assert_eq!(summary.inserted, 20);
    assert_eq!(summary.count, 20);
    assert_eq!(summary.found.len(), 19);
    let py = python(
        "workload.py",
        &[&plain_tap.uri(), &unique_db("tls_upstream_py")],
    )
    .await;
    assert_eq!(py["final_count"], 21, "{py}");
    assert!(plain_tap.events("upstream_unreachable").is_empty());

    // Both sides at once: clients speak TLS to mongotap, mongotap to FerretDB.
    let both_dir = tempdir();
    let proxy_ca = Ca::new(both_dir.path(), "proxy");
    let config = client_section(&proxy_ca.server("proxy-server"), None)
        + &upstream_section(&db_ca, "localhost", None);
    let both = proxy(ferret.addr(), &write_config(both_dir.path(), &config));
    let uri = tls_uri(both.listen, &proxy_ca, None);
    let through = rust_workload(&uri, &unique_db("tls_both_rust")).await;
    assert_eq!(through.found, summary.found);
    assert_eq!(through.grouped, summary.grouped);

    // Without [tls.upstream], FerretDB's TLS port refuses mongotap's
    // plaintext: proof that the traffic above really was encrypted.
    let no_tls = Mongotap::start(ferret.addr());
    let client = driver(&no_tls.uri(), SELECT_REFUSED).await;
    assert!(ping(&client).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_certificate_for_ferretdb_requiring_one() {
    let dir = tempdir();
    let db_ca = Ca::new(dir.path(), "db");
    let users_ca = Ca::new(dir.path(), "users");
    // --listen-tls-ca-file makes FerretDB require a client certificate.
    let ferret = TlsFerret::start(&db_ca.server("ferret"), Some(&users_ca));

    let with_cert_dir = tempdir();
    let identity = users_ca.client("mongotap-client", "mongotap");
    let tap = proxy(
        ferret.addr(),
        &write_config(
            with_cert_dir.path(),
            &upstream_section(&db_ca, "localhost", Some(&identity)),
        ),
    );
    let client = driver(&tap.uri(), SELECT).await;
    let coll = client
        .database(&unique_db("tls_upstream_mtls"))
        .collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1, "who": "app" })
        .await
        .expect("insert through mongotap presenting its certificate");
    let back = coll.find_one(doc! { "_id": 1 }).await.expect("find");
    assert_eq!(back, Some(doc! { "_id": 1, "who": "app" }));

    // Without a client certificate FerretDB turns mongotap away. With TLS
    // 1.3 the server checks the client's certificate after mongotap's side
    // of the handshake is done, so the refusal arrives as an alert on the
    // first read and is reported on the command that was waiting for it.
    let without_dir = tempdir();
    let bare = proxy(
        ferret.addr(),
        &write_config(
            without_dir.path(),
            &upstream_section(&db_ca, "localhost", None),
        ),
    );
    let client = driver(&bare.uri(), SELECT_REFUSED).await;
    assert!(ping(&client).await.is_err());
    event_containing(&bare, "never_replied", "reason", "CertificateRequired").await;
}

// ---------------------------------------------------------------------------
// 3. Mutual TLS on the client side
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_signed_clients_and_rejects_others() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let apps_ca = Ca::new(dir.path(), "apps");
    let rogue_ca = Ca::new(dir.path(), "rogue");
    let app = apps_ca.client("app", "billing");
    let rogue = rogue_ca.client("rogue", "billing");
    let ferret = Ferret::start();
    let tap = proxy(
        ferret.addr(),
        &write_config(
            dir.path(),
            &client_section(&ca.server("proxy-server"), Some(&apps_ca)),
        ),
    );

    // Accepted: the Rust driver and pymongo, each with a signed certificate.
    let summary = rust_workload(
        &tls_uri(tap.listen, &ca, Some(&app)),
        &unique_db("mtls_rust"),
    )
    .await;
    assert_eq!(summary.count, 20);
    let py = python(
        "workload.py",
        &[&tls_uri(tap.listen, &ca, Some(&app)), &unique_db("mtls_py")],
    )
    .await;
    assert_eq!(py["final_count"], 21, "{py}");
    assert!(tap.events("decode_error").is_empty());

    // Rejected: no certificate at all.
    let client = driver(&tls_uri(tap.listen, &ca, None), SELECT_REFUSED).await;
    assert!(
        ping(&client).await.is_err(),
        "a client without a certificate got in"
    );
    let e = decode_error_containing(&tap, "no certificates").await;
    assert_eq!(e["side"], "client", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("TLS handshake failed")),
        "{e}"
    );

    // Rejected: a certificate from a CA mongotap does not trust.
    let client = driver(&tls_uri(tap.listen, &ca, Some(&rogue)), SELECT_REFUSED).await;
    assert!(ping(&client).await.is_err(), "a rogue certificate got in");
    decode_error_containing(&tap, "invalid peer certificate").await;

    // Still serving the good client afterwards.
    let client = driver(&tls_uri(tap.listen, &ca, Some(&app)), SELECT).await;
    ping(&client).await.expect("signed client after rejections");
}

// ---------------------------------------------------------------------------
// 4. Bad upstream certificates
// ---------------------------------------------------------------------------

/// mongotap (plaintext to clients, TLS to `upstream`) and the event it logs
/// once a client connects.
async fn upstream_failure(dir: &Path, ca: &Ca, upstream: SocketAddr) -> Value {
    let tap = proxy(
        upstream,
        &write_config(dir, &upstream_section(ca, "localhost", None)),
    );
    let client = driver(&tap.uri(), SELECT_REFUSED).await;
    assert!(ping(&client).await.is_err());
    let e = tap
        .wait_for_event_async("upstream_unreachable", EVENT)
        .await;
    let error = e["error"].as_str().unwrap_or_default();
    // Which server, and which name was checked, are in every such line.
    assert!(error.contains(&upstream.to_string()), "{e}");
    assert!(error.contains("verifying name localhost"), "{e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_upstream_certificate_is_named() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "db");
    let expired = ca.issue(
        "expired",
        "localhost",
        &["localhost", "127.0.0.1"],
        Leaf::ExpiredServer,
    );
    let (addr, _server) = handshake_only_server(&expired).await;
    let e = upstream_failure(dir.path(), &ca, addr).await;
    let error = e["error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate expired"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_upstream_certificate_is_named() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "db");
    let elsewhere = ca.issue(
        "elsewhere",
        "db.example.com",
        &["db.example.com"],
        Leaf::Server,
    );
    let (addr, _server) = handshake_only_server(&elsewhere).await;
    let e = upstream_failure(dir.path(), &ca, addr).await;
    let error = e["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not valid for name \"localhost\"") && error.contains("db.example.com"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// 5. Wrong protocol on either port
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_on_tls_port_is_named() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let ferret = Ferret::start();
    let tap = proxy(
        ferret.addr(),
        &write_config(
            dir.path(),
            &client_section(&ca.server("proxy-server"), None),
        ),
    );

    // A driver without tls=true sends its hello in the clear.
    let client = driver(&tap.uri(), SELECT_REFUSED).await;
    assert!(ping(&client).await.is_err());
    let e = decode_error_containing(&tap, "plaintext to a TLS port").await;
    assert_eq!(e["side"], "client", "{e}");
    // And so does a raw socket.
    let mut raw = TcpStream::connect(tap.listen).await.expect("connect");
    assert!(raw_command(&mut raw, &hello()).await.is_err());

    // Nothing crashed: a TLS client still gets through.
    let client = driver(&tls_uri(tap.listen, &ca, None), SELECT).await;
    ping(&client)
        .await
        .expect("TLS client after plaintext ones");
    // Counted as failed TLS handshakes (the driver's, which may retry, and
    // the raw socket's), not as malformed frames: no frame was read.
    assert!(
        metric(
            &tap,
            "mongotap_tls_handshake_failures_total{side=\"client\"}"
        ) >= 2.0
    );
    assert_eq!(metric(&tap, "mongotap_decode_errors_total"), 0.0);
}

/// The value of one series in `/metrics`, as `name{labels}` is printed.
fn metric(tap: &Mongotap, series: &str) -> f64 {
    let (status, metrics) = tap.admin_get("/metrics");
    assert_eq!(status, 200);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
}

/// Waits until `series` reaches `want` (the session counts after the
/// client saw its connection close), then checks it stays there.
async fn metric_reaches(tap: &Mongotap, series: &str, want: f64) {
    let deadline = Instant::now() + EVENT;
    while metric(tap, series) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(tap, series), want, "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plaintext_client_on_a_tls_port_is_one_tls_failure_and_no_decode_error() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let upstream = Scripted::start(default_reply).await;
    let tap = proxy(
        upstream.addr,
        &write_config(
            dir.path(),
            &client_section(&ca.server("proxy-server"), None),
        ),
    );
    let mut raw = TcpStream::connect(tap.listen).await.expect("connect");
    assert!(raw_command(&mut raw, &hello()).await.is_err());
    metric_reaches(
        &tap,
        "mongotap_tls_handshake_failures_total{side=\"client\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &tap,
            "mongotap_tls_handshake_failures_total{side=\"upstream\"}"
        ),
        0.0
    );
    assert_eq!(metric(&tap, "mongotap_decode_errors_total"), 0.0);
    assert_eq!(metric(&tap, "mongotap_upstream_connect_errors_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_upstream_handshake_is_one_upstream_tls_failure() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "db");
    let elsewhere = ca.issue(
        "elsewhere",
        "db.example.com",
        &["db.example.com"],
        Leaf::Server,
    );
    let (addr, _server) = handshake_only_server(&elsewhere).await;
    let tap = proxy(
        addr,
        &write_config(dir.path(), &upstream_section(&ca, "localhost", None)),
    );
    // One plaintext client, one connection mongotap tries to open.
    let mut raw = TcpStream::connect(tap.listen).await.expect("connect");
    assert!(raw_command(&mut raw, &hello()).await.is_err());
    metric_reaches(
        &tap,
        "mongotap_tls_handshake_failures_total{side=\"upstream\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &tap,
            "mongotap_tls_handshake_failures_total{side=\"client\"}"
        ),
        0.0
    );
    assert_eq!(metric(&tap, "mongotap_upstream_connect_errors_total"), 1.0);
    assert_eq!(metric(&tap, "mongotap_decode_errors_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_on_plaintext_port_is_named() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let ferret = Ferret::start();
    let tap = Mongotap::start(ferret.addr());

    let client = driver(&tls_uri(tap.listen, &ca, None), SELECT_REFUSED).await;
    assert!(ping(&client).await.is_err());
    let e = decode_error_containing(&tap, "TLS ClientHello").await;
    assert_eq!(e["side"], "client", "{e}");
    // A raw TLS client too.
    assert!(raw_tls(tap.listen, raw_client_config(&ca, None))
        .await
        .is_err());

    let client = driver(&tap.uri(), SELECT).await;
    ping(&client)
        .await
        .expect("plaintext client after TLS ones");
}

// ---------------------------------------------------------------------------
// 6. Reloading certificates on SIGHUP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_keeps_open_connections() {
    let dir = tempdir();
    let old_ca = Ca::new(dir.path(), "old");
    let new_ca = Ca::new(dir.path(), "new");
    let old = old_ca.server("old-server");
    let new = new_ca.server("new-server");
    // The config names fixed paths; renewal overwrites the files, as
    // cert-manager or certbot do.
    let live = Identity {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
        combined: dir.path().join("unused"),
    };
    std::fs::copy(&old.cert, &live.cert).expect("copy cert");
    std::fs::copy(&old.key, &live.key).expect("copy key");
    let ferret = Ferret::start();
    let tap = proxy(
        ferret.addr(),
        &write_config(dir.path(), &client_section(&live, None)),
    );

    // Open before the reload: a raw connection and a driver pool of one.
    let mut raw = raw_tls(tap.listen, raw_client_config(&old_ca, None))
        .await
        .expect("TLS with the old certificate");
    assert!(is_ok(
        &raw_command(&mut raw, &hello()).await.expect("hello")
    ));
    let created = Arc::new(AtomicUsize::new(0));
    let mut opts = ClientOptions::parse(tls_uri(tap.listen, &old_ca, None))
        .await
        .expect("URI");
    opts.max_pool_size = Some(1);
    opts.server_selection_timeout = Some(SELECT);
    let counter = Arc::clone(&created);
    opts.cmap_event_handler = Some(EventHandler::callback(move |ev| {
        if let CmapEvent::ConnectionCreated(_) = ev {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let pooled = Client::with_options(opts).expect("client");
    let coll = pooled
        .database(&unique_db("tls_reload"))
        .collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    assert_eq!(created.load(Ordering::SeqCst), 1);

    std::fs::copy(&new.cert, &live.cert).expect("renew cert");
    std::fs::copy(&new.key, &live.key).expect("renew key");
    signal(tap.pid(), "HUP");
    tap.wait_for_event_async("config_reloaded", EVENT).await;

    // Existing connections keep working on the certificate they started with.
    assert!(is_ok(
        &raw_command(&mut raw, &hello())
            .await
            .expect("hello on the connection opened before the reload")
    ));
    coll.insert_one(doc! { "_id": 2 })
        .await
        .expect("insert on the pooled connection after the reload");
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 2);
    assert_eq!(
        created.load(Ordering::SeqCst),
        1,
        "the driver had to open a new connection: the old one was dropped"
    );

    // New connections get the new certificate: the old CA no longer
    // verifies it, the new one does.
    let refused = match raw_tls(tap.listen, raw_client_config(&old_ca, None)).await {
        Ok(mut s) => raw_command(&mut s, &hello()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a new connection still got the old certificate");
    let mut fresh = raw_tls(tap.listen, raw_client_config(&new_ca, None))
        .await
        .expect("TLS with the new certificate");
    assert!(is_ok(
        &raw_command(&mut fresh, &hello()).await.expect("hello")
    ));
    let client = driver(&tls_uri(tap.listen, &new_ca, None), SELECT).await;
    ping(&client).await.expect("driver trusting the new CA");

    // A broken certificate is rejected as a whole; the last good one stays.
    std::fs::write(&live.cert, "not a certificate\n").expect("break cert");
    signal(tap.pid(), "HUP");
    let e = tap
        .wait_for_event_async("config_reload_failed", EVENT)
        .await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains(path(&live.cert))),
        "{e}"
    );
    let mut after = raw_tls(tap.listen, raw_client_config(&new_ca, None))
        .await
        .expect("TLS after a rejected reload");
    assert!(is_ok(
        &raw_command(&mut after, &hello()).await.expect("hello")
    ));
    assert!(is_ok(
        &raw_command(&mut raw, &hello()).await.expect("hello")
    ));
}

/// The first `explained` or `explain_failed` event for `collection`.
async fn explain_outcome(tap: &Mongotap, collection: &str) -> Value {
    let deadline = Instant::now() + EVENT;
    loop {
        if let Some(e) = tap.logs().into_iter().find(|l| {
            (l["event"] == "explained" || l["event"] == "explain_failed")
                && l["collection"] == collection
        }) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no explain outcome for {collection} within {EVENT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Auto-explain opens its own upstream connection for each explain, with
/// the TLS settings in force at that moment: once a SIGHUP swaps the
/// upstream CA for one that cannot verify FerretDB, explains fail the
/// handshake (while the sessions opened before keep working), and once the
/// right CA is back they succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explains_use_the_upstream_ca_of_the_last_reload() {
    let dir = tempdir();
    let db_ca = Ca::new(dir.path(), "db");
    let other_ca = Ca::new(dir.path(), "other");
    let ferret = TlsFerret::start(&db_ca.server("ferret"), None);
    let live_ca = dir.path().join("upstream-ca.pem");
    std::fs::copy(&db_ca.pem, &live_ca).expect("copy CA");
    let config = format!(
        "[tls.upstream]\nca = \"{}\"\nserver_name = \"localhost\"\n\
         [explain]\nenabled = true\nafter_ms = 0\nmax_time_ms = 5000\n",
        path(&live_ca)
    );
    let tap = proxy(ferret.addr(), &write_config(dir.path(), &config));

    // One pooled connection, opened before the reloads and kept: its
    // session's upstream TLS connection outlives them.
    let created = Arc::new(AtomicUsize::new(0));
    let mut opts = ClientOptions::parse(tap.uri()).await.expect("URI");
    opts.max_pool_size = Some(1);
    opts.server_selection_timeout = Some(SELECT);
    let counter = Arc::clone(&created);
    opts.cmap_event_handler = Some(EventHandler::callback(move |ev| {
        if let CmapEvent::ConnectionCreated(_) = ev {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let client = Client::with_options(opts).expect("client");
    let db = client.database(&unique_db("tls_explain_reload"));
    // Each phase aggregates its own collection: explains are rate limited
    // per (db, collection, stages).
    let aggregate = |collection: &'static str| {
        let coll = db.collection::<Document>(collection);
        async move {
            coll.insert_many([doc! { "g": 1 }, doc! { "g": 2 }, doc! { "g": 1 }])
                .await
                .expect("insert");
            let groups: Vec<Document> = coll
                .aggregate([doc! { "$group": { "_id": "$g", "n": { "$sum": 1 } } }])
                .await
                .expect("aggregate")
                .try_collect()
                .await
                .expect("aggregate cursor");
            assert_eq!(groups.len(), 2);
        }
    };

    aggregate("before").await;
    let before = explain_outcome(&tap, "before").await;
    assert_eq!(before["event"], "explained", "{before}");

    // Renewal overwrites the CA file with one that did not sign FerretDB's
    // certificate.
    std::fs::copy(&other_ca.pem, &live_ca).expect("swap CA");
    signal(tap.pid(), "HUP");
    tap.wait_for_event_async("config_reloaded", EVENT).await;
    aggregate("after").await;
    let after = explain_outcome(&tap, "after").await;
    assert_eq!(
        after["event"], "explain_failed",
        "an explain after the reload still trusted the old CA: {after}"
    );
    let reason = after["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("TLS") && reason.contains("certificate"),
        "{after}"
    );

    std::fs::copy(&db_ca.pem, &live_ca).expect("restore CA");
    signal(tap.pid(), "HUP");
    let deadline = Instant::now() + EVENT;
    while tap.events("config_reloaded").len() < 2 {
        assert!(Instant::now() < deadline, "no second config_reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    aggregate("restored").await;
    let restored = explain_outcome(&tap, "restored").await;
    assert_eq!(restored["event"], "explained", "{restored}");
    assert_eq!(
        created.load(Ordering::SeqCst),
        1,
        "every aggregate went through the session opened before the reloads"
    );
    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// Large messages through TLS to a slow reader
// ---------------------------------------------------------------------------

/// Replies far bigger than the socket buffers, read slowly over TLS: every
/// byte arrives, reply after reply on the same connection. (Whether the
/// last write of a reply finds the socket full is up to timing here; the
/// deterministic check that mongotap flushes TLS writes is the unit test
/// `session::tests::tls_tail_is_flushed_when_the_socket_was_full`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_reach_a_slow_tls_reader_whole() {
    const BLOB: usize = 4 << 20;
    let blob = "x".repeat(BLOB);
    let upstream = Scripted::start(move |req: &Received| {
        if req.name() != "find" {
            return default_reply(req);
        }
        let body = rawdoc! {
            "cursor": {
                "id": 0_i64,
                "ns": "db.big",
                "firstBatch": [{ "_id": 1, "blob": blob.as_str() }],
            },
            "ok": 1.0,
        };
        vec![Step::Send(reply(req, &body))]
    })
    .await;
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let tap = proxy(
        upstream.addr,
        &write_config(
            dir.path(),
            &client_section(&ca.server("proxy-server"), None),
        ),
    );
    let mut tls = raw_tls(tap.listen, raw_client_config(&ca, None))
        .await
        .expect("TLS");

    for round in 0..3 {
        let find = op_msg::encode(7, 0, 0, &rawdoc! { "find": "big", "$db": "db" }, &[]);
        tls.write_all(&find).await.expect("send find");
        tls.flush().await.expect("flush");
        let read = async {
            let mut buf = BytesMut::with_capacity(BLOB + 1024);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                if let Some(frame) =
                    mongotap_proto::decode(&mut buf, MAX_MESSAGE_LEN).expect("frame")
                {
                    return frame.bytes.len();
                }
                let n = tls.read(&mut chunk).await.expect("read");
                assert!(n > 0, "mongotap closed the connection mid-reply");
                buf.extend_from_slice(&chunk[..n]);
                // Slower than mongotap writes, so its socket stays full.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let len = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the end of the reply never arrived"));
        assert!(len > BLOB, "round {round}: reply of {len} bytes");
    }
}

// ---------------------------------------------------------------------------
// check-config loads the certificates the proxy would load
// ---------------------------------------------------------------------------

#[test]
fn check_config_rejects_unreadable_certificates() {
    let dir = tempdir();
    let ca = Ca::new(dir.path(), "proxy");
    let good = write_config(
        dir.path(),
        &client_section(&ca.server("proxy-server"), None),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .args(["check-config", path(&good)])
        .output()
        .expect("run check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = dir.path().join("missing.pem");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[tls.client]\ncert = \"{}\"\nkey = \"{}\"\n",
            path(&missing),
            path(&missing)
        ),
    )
    .expect("write bad config");
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .args(["check-config", path(&bad)])
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted {stderr}");
    assert!(stderr.contains(path(&missing)), "{stderr}");
}

/// The commented-out `[tls.*]` sections of the shipped config.toml, with
/// their keys uncommented and pointed at real files, pass check-config: the
/// documented keys exist and load.
#[test]
fn shipped_config_documents_real_tls_keys() {
    let text =
        std::fs::read_to_string(support::repo_file("config.toml")).expect("read config.toml");
    let dir = tempdir();
    let proxy_ca = Ca::new(dir.path(), "proxy");
    let apps_ca = Ca::new(dir.path(), "apps");
    let db_ca = Ca::new(dir.path(), "db");
    let server = proxy_ca.server("proxy-server");
    let client = db_ca.client("mongotap-client", "mongotap");
    let mut config = String::new();
    let mut section = None;
    let mut keys = Vec::new();
    for line in text.lines() {
        // Any other table, commented out or not, ends a TLS section.
        if line.starts_with('[') || (line.starts_with("# [") && !line.starts_with("# [tls.")) {
            section = None;
            continue;
        }
        if let Some(name) = line
            .strip_prefix("# [tls.")
            .and_then(|r| r.strip_suffix(']'))
        {
            config += &format!("[tls.{name}]\n");
            section = Some(name.to_string());
            continue;
        }
        let (Some(side), Some((key, _))) = (
            section.as_deref(),
            line.strip_prefix("# ").and_then(|l| l.split_once(" = \"")),
        ) else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let value = match (side, key) {
            ("client", "cert") => path(&server.cert),
            ("client", "key") => path(&server.key),
            ("client", "ca") => path(&apps_ca.pem),
            ("upstream", "ca") => path(&db_ca.pem),
            ("upstream", "server_name") => "localhost",
            ("upstream", "cert") => path(&client.cert),
            ("upstream", "key") => path(&client.key),
            other => panic!("config.toml documents an unexpected TLS key {other:?}"),
        };
        config += &format!("{key} = \"{value}\"\n");
        keys.push(format!("{side}.{key}"));
    }
    assert_eq!(
        keys.len(),
        7,
        "expected every [tls.client] and [tls.upstream] key in config.toml, found {keys:?}"
    );
    let file = write_config(dir.path(), &config);
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .args(["check-config", path(&file)])
        .output()
        .expect("run check-config");
    assert!(
        out.status.success(),
        "{config}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
