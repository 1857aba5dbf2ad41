//! TLS on either side, with rustls and the ring provider only (linking two
//! providers makes `ServerConfig::builder()` panic). Certificates load from
//! PEM files; SIGHUP rebuilds both configs, and connections already open
//! keep the config they started with.

use crate::config::{TlsClientSide, TlsConfig, TlsUpstreamSide};
use crate::mongo_client::TlsUpstream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use thiserror::Error;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("invalid TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA for mutual TLS: {0}")]
    Verifier(String),
    #[error("tls.upstream.server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            what,
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.into(),
            expected: "PEM CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.into(),
        reason: e.to_string(),
    })
}

fn roots(what: &'static str, path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(what, path)? {
        store.add(c)?;
    }
    Ok(store)
}

/// The acceptor for client connections.
pub fn acceptor(side: &TlsClientSide) -> Result<TlsAcceptor, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &side.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("client CA", ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs("certificate", &side.cert)?, key(&side.key)?)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connector for upstream connections, and the name it verifies.
pub fn connector(side: &TlsUpstreamSide, upstream: &str) -> Result<TlsUpstream, TlsError> {
    let store = match &side.ca {
        Some(ca) => roots("upstream CA", ca)?,
        None => {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A bad system certificate is skipped, as browsers do.
                let _ = store.add(c);
            }
            store
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(store);
    let config = match (&side.cert, &side.key) {
        (Some(cert), Some(k)) => {
            builder.with_client_auth_cert(certs("upstream client certificate", cert)?, key(k)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = side
        .server_name
        .clone()
        .unwrap_or_else(|| crate::config::host_of(upstream).to_string());
    let name = ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// Both sides' TLS state, rebuilt whole on reload.
#[derive(Clone, Default)]
pub struct Tls {
    pub acceptor: Option<TlsAcceptor>,
    pub connector: Option<TlsUpstream>,
}

impl Tls {
    pub fn load(cfg: &TlsConfig, upstream: &str) -> Result<Tls, TlsError> {
        Ok(Tls {
            acceptor: cfg.client.as_ref().map(acceptor).transpose()?,
            connector: cfg
                .upstream
                .as_ref()
                .map(|u| connector(u, upstream))
                .transpose()?,
        })
    }
}
