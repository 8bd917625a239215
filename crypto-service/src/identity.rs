//! The client allow-list under mutual TLS.
//!
//! The TLS handshake already proves that the client holds a certificate
//! signed by the configured client CA; this interceptor then admits only
//! certificates valid for one of the allow-listed DNS names, so a
//! certificate the CA issued to some other workload is refused.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::Error;

/// Admits calls whose client certificate names an allowed DNS name.
#[derive(Debug, Clone)]
pub struct AllowList {
    /// `None` when the transport is not TLS (unix socket, loopback, mesh).
    names: Option<Arc<Vec<ServerName<'static>>>>,
}

impl AllowList {
    /// An allow-list of DNS names; names that are not valid DNS names are
    /// refused at start-up.
    pub fn new(names: &[String]) -> Result<Self, Error> {
        let parsed = names
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| {
                    Error::config(
                        "CRYPTO_ALLOWED_CLIENTS",
                        format!("{name:?} is not a DNS name"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            names: Some(Arc::new(parsed)),
        })
    }

    /// No allow-list: the transport itself is trusted.
    pub fn disabled() -> Self {
        Self { names: None }
    }

    fn admits(&self, peer_certs: Option<&[CertificateDer<'static>]>) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        let Some(leaf) = peer_certs.and_then(<[_]>::first) else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        names
            .iter()
            .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
    }
}

impl Interceptor for AllowList {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs();
        if self.admits(certs.as_deref().map(Vec::as_slice)) {
            Ok(request)
        } else {
            tracing::warn!(remote = ?request.remote_addr(), "refused a client that is not allow-listed");
            Err(Error::ClientNotAllowed.into())
        }
    }
}
