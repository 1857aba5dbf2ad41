//! mongotap's own connection for the diagnosis: every command bounded by
//! the probe timeout. After one timeout the connection is given up (a
//! request is mid-flight on it) and every later probe is skipped: a server
//! that did not answer a `find` with a limit will not answer the next one.

use super::DiagnoseError;
use crate::mongo_client::{ClientError, TlsUpstream, UpstreamClient};
use bson::{Document, RawDocumentBuf};
use std::time::Duration;

pub struct Probe {
    client: Option<UpstreamClient>,
    timeout: Duration,
    /// Set once a probe got no answer within `timeout`.
    timed_out: bool,
}

impl Probe {
    /// Connects (TLS, hello, SCRAM when `credentials` are given), all within
    /// `timeout`. A server that accepts the connection but never answers
    /// hello yields a stalled probe, not an error: that is a diagnosis.
    pub async fn connect(
        addr: &str,
        tls: Option<&TlsUpstream>,
        credentials: Option<(&str, &str, &str)>,
        timeout: Duration,
    ) -> Result<Probe, ClientError> {
        let mut probe = Probe {
            client: None,
            timeout,
            timed_out: false,
        };
        let connected = tokio::time::timeout(timeout, async {
            let mut c = UpstreamClient::connect_as(addr, timeout, tls, "mongotap-diagnose").await?;
            if let Some((user, password, db)) = credentials {
                c.auth_scram_sha256(user, password, db).await?;
            }
            Ok::<_, ClientError>(c)
        })
        .await;
        match connected {
            Ok(Ok(c)) => probe.client = Some(c),
            Ok(Err(ClientError::ConnectTimeout { .. })) | Err(_) => probe.timed_out = true,
            Ok(Err(e)) => return Err(e),
        }
        Ok(probe)
    }

    pub fn stalled(&self) -> bool {
        self.timed_out
    }

    /// The timeout in ms, when a probe hit it.
    pub fn timed_out_ms(&self) -> Option<u64> {
        self.timed_out.then_some(self.timeout.as_millis() as u64)
    }

    fn timed_out_error(&self) -> DiagnoseError {
        DiagnoseError::ProbeTimedOut {
            ms: self.timeout.as_millis() as u64,
        }
    }

    /// Sends `body` (which carries `$db`) and returns the reply.
    pub async fn command(&mut self, body: Document) -> Result<RawDocumentBuf, DiagnoseError> {
        let raw = RawDocumentBuf::try_from(&body)?;
        self.raw_command(&raw).await
    }

    pub async fn raw_command(
        &mut self,
        body: &RawDocumentBuf,
    ) -> Result<RawDocumentBuf, DiagnoseError> {
        if self.timed_out {
            return Err(self.timed_out_error());
        }
        let Some(client) = self.client.as_mut() else {
            return Err(self.timed_out_error());
        };
        match tokio::time::timeout(self.timeout, client.command(body)).await {
            Ok(r) => r.map_err(DiagnoseError::Upstream),
            Err(_) => {
                self.timed_out = true;
                self.client = None;
                Err(self.timed_out_error())
            }
        }
    }
}
