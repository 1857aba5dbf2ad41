//! TLS to a member: mongotap verifies each member's certificate, and sends
//! SNI, under that member's own host name (issue 17). Each member here sits
//! behind its own TLS front, and the set names its members by the fronts'
//! `localhost:PORT`, as a real set would name TLS members by host name.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpStream;

use super::drivers::count_in_ferret;
use super::*;

/// A throwaway certificate authority.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `name` only, with its key.
    fn leaf(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }
}

/// A TLS listener presenting `leaf` that relays each connection, in the
/// clear, to `member`; the SNI of every handshake it completed goes to
/// `sni`.
async fn tls_front(
    member: SocketAddr,
    leaf: (CertificateDer<'static>, PrivateKeyDer<'static>),
    sni: Arc<Mutex<Vec<Option<String>>>>,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.0], leaf.1)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind front");
    let addr = listener.local_addr().expect("front addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sni = sni.clone();
            tokio::spawn(async move {
                // A failed handshake is what the bad member's test expects.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let name = tls.get_ref().1.server_name().map(str::to_string);
                sni.lock().expect("sni").push(name);
                if let Ok(mut plain) = TcpStream::connect(member).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_member_verifies_that_members_host_name() {
    let ferret = ferret();
    let set = ReplSet::start(ferret.addr(), 2).await;
    let ca = TestCa::new();
    // Member 0's certificate names the host mongotap dials; member 1's
    // names another host, so verifying member 1 must fail.
    let sni = Arc::new(Mutex::new(Vec::new()));
    let good = tls_front(set.addr(0), ca.leaf("localhost"), sni.clone()).await;
    let bad = tls_front(set.addr(1), ca.leaf("elsewhere.test"), Arc::default()).await;
    let good_name = format!("localhost:{}", good.port());
    let bad_name = format!("localhost:{}", bad.port());
    set.rename(0, &good_name);
    set.rename(1, &bad_name);

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let listens = [local(free_port()), local(free_port())];
    let mut toml =
        "[health]\ninterval_ms = 200\n\n[topology]\nmode = \"replica-set\"\n".to_string();
    for (upstream, listen) in [(&good_name, listens[0]), (&bad_name, listens[1])] {
        toml.push_str(&format!(
            "\n[[topology.member]]\nupstream = \"{upstream}\"\nlisten = \"{}\"\n",
            host(listen)
        ));
    }
    toml.push_str(&format!(
        "\n[tls.upstream]\nca = \"{}\"\n",
        ca_file.display()
    ));
    let tap = tokio::task::block_in_place(|| {
        let mut tap = Mongotap::spawn_config(&toml, &[]);
        tap.wait_listening(&listens);
        tap
    });

    // The good member (the primary) works through mongotap.
    let db = unique_db("tls_member");
    let uri = format!(
        "mongodb://{}/?replicaSet={SET_NAME}&serverSelectionTimeoutMS=10000",
        host(listens[0])
    );
    let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
    client
        .database(&db)
        .collection::<bson::Document>("items")
        .insert_one(bson::doc! { "n": 1 })
        .await
        .expect("insert through the TLS member");
    assert_eq!(count_in_ferret(&ferret, &db).await, 1, "FerretDB's count");
    // Every connection to the member (probe and sessions) asked for its name.
    let seen = sni.lock().expect("sni").clone();
    assert!(!seen.is_empty(), "no handshake reached the member");
    assert!(
        seen.iter().all(|n| n.as_deref() == Some("localhost")),
        "SNI sent to the member: {seen:?}"
    );

    // The driver's monitor of member 1's listener meets the bad certificate.
    let event = tap.wait_for_event_async("upstream_unreachable", T).await;
    assert_eq!(event["upstream"], bad_name.as_str(), "{event}");
    let error = event["error"].as_str().expect("error");
    assert!(
        error.contains("verifying name localhost")
            && error.contains("certificate not valid for name \"localhost\""),
        "{error}"
    );
    let (code, metrics) = tap.admin_get("/metrics");
    assert_eq!(code, 200);
    let failures: f64 = prom::parse(&metrics)
        .iter()
        .filter(|s| {
            s.name == "mongotap_tls_handshake_failures_total"
                && s.labels.get("side").map(String::as_str) == Some("upstream")
        })
        .map(|s| s.value)
        .sum();
    assert!(failures >= 1.0, "{metrics}");
    drop(client);
}
