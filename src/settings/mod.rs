//! The settings SIGHUP reloads (TLS certificates, rewrite rules), kept
//! behind one swap: the TLS acceptor and connector (`tls`), the compiled
//! rewrite rules (`policy`), and the swap that holds them. Every user reads the swap when it acts, never a copy
//! taken earlier: sessions when a connection starts, the request observer
//! for each command, auto-explain at each explain and the health probe at
//! each connect. Anything that kept its own copy would go on using the old
//! certificates after a reload.

pub mod policy;
pub mod tls;

use crate::config::Config;
use arc_swap::ArcSwap;
use policy::Policy;
use std::sync::Arc;
use tls::{Tls, TlsError};

/// One generation of the reloadable settings, replaced whole so a reader
/// never sees new certificates with old rules or the other way round.
pub struct Reloadable {
    /// TLS acceptor (for clients) and connector (for the upstream).
    pub tls: Tls,
    /// The compiled rewrite rules.
    pub policy: Policy,
}

impl Reloadable {
    pub fn new(tls: Tls, config: &Config) -> Reloadable {
        Reloadable {
            tls,
            policy: Policy::compile(&config.rewrite),
        }
    }

    /// Loads certificates from `config` and compiles its rules. The
    /// upstream address comes from the running proxy: a reload cannot
    /// change it, but the TLS server name defaults to its host.
    pub fn load(config: &Config, upstream: &str) -> Result<Reloadable, TlsError> {
        Ok(Reloadable::new(Tls::load(&config.tls, upstream)?, config))
    }
}

/// The swap itself, held by `Shared`, the `Observatory`, the explainer and
/// the health probe.
pub type Settings = Arc<ArcSwap<Reloadable>>;

pub fn swap(initial: Reloadable) -> Settings {
    Arc::new(ArcSwap::from_pointee(initial))
}
