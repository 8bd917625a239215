//! Server TLS whose certificate can change while the process runs.
//!
//! [`ReloadingTls`] holds the rustls configuration built from a certificate
//! chain, its private key and optionally a client CA (client certificates
//! then required and verified). Each accepted connection takes the
//! configuration current at that moment ([`ReloadingTls::config`]), so a
//! reload changes what new connections see while established ones keep
//! theirs. [`watch`] reloads on SIGHUP and whenever the files' contents
//! change (a Kubernetes Secret or cert-manager rewriting them); a set of
//! files that does not load (a key that does not match its certificate
//! because only one of the two has been rewritten yet, say) is logged and
//! the configuration in use stays.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// The files a server's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificate(s), PEM, that sign the client certificates every
    /// client must then present; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Which file a problem is about, so the caller can name its setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// [`TlsFiles::cert`].
    Cert,
    /// [`TlsFiles::key`].
    Key,
    /// [`TlsFiles::client_ca`].
    ClientCa,
}

/// Why a set of TLS files did not load. Never holds key material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{problem}")]
pub struct TlsError {
    /// The file at fault.
    pub file: TlsFile,
    /// What is wrong with it.
    pub problem: String,
}

/// What a call to [`ReloadingTls::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are the ones already loaded (or already found broken).
    Unchanged,
    /// New connections now get the new configuration.
    Reloaded,
    /// The files changed but do not load; the configuration in use stays.
    Failed(String),
}

/// The TLS configuration new connections get, replaceable at run time.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// A hash of the file contents last tried (loaded or not), so a poll
    /// that finds nothing new neither rebuilds nor logs.
    last_tried: Mutex<u64>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads `files`; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let contents = Contents::read(&files)?;
        let config = contents.server_config()?;
        Ok(Self {
            last_tried: Mutex::new(contents.fingerprint()),
            current: RwLock::new(Arc::new(config)),
            files,
        })
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether client certificates are required.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again and, when they differ from the last ones tried
    /// (or `forced`), builds a new configuration for new connections.
    pub fn reload(&self, forced: bool) -> Reload {
        let contents = match Contents::read(&self.files) {
            Ok(contents) => contents,
            Err(error) => return Reload::Failed(error.to_string()),
        };
        let fingerprint = contents.fingerprint();
        {
            let mut last = self
                .last_tried
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *last == fingerprint && !forced {
                return Reload::Unchanged;
            }
            *last = fingerprint;
        }
        match contents.server_config() {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                Reload::Reloaded
            }
            Err(error) => Reload::Failed(error.to_string()),
        }
    }
}

/// Reloads `tls` on SIGHUP, and every `interval` when the files changed
/// (`None`: on SIGHUP only), logging each reload and each failure. The
/// SIGHUP handler is installed before this returns, so a SIGHUP that
/// arrives from then on reloads instead of ending the process.
pub fn watch(
    tls: Arc<ReloadingTls>,
    interval: Option<Duration>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let mut ticks = interval.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let trigger = tokio::select! {
                received = hangups.recv() => match received {
                    Some(()) => "SIGHUP",
                    None => return,
                },
                _ = async {
                    match ticks.as_mut() {
                        Some(ticks) => ticks.tick().await,
                        None => std::future::pending().await,
                    }
                } => "file change",
            };
            match tls.reload(trigger == "SIGHUP") {
                Reload::Unchanged => {}
                Reload::Reloaded => tracing::info!(trigger, "TLS certificate reloaded"),
                Reload::Failed(problem) => tracing::warn!(
                    trigger,
                    %problem,
                    "TLS certificate reload failed; new connections keep the current one"
                ),
            }
        }
    }))
}

/// The bytes of one set of files.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Drop for Contents {
    fn drop(&mut self) {
        // Key bytes do not outlive the load (rustls keeps its own copy).
        self.key.fill(0);
    }
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(TlsFile::Cert, &files.cert)?,
            key: read(TlsFile::Key, &files.key)?,
            client_ca: files
                .client_ca
                .as_deref()
                .map(|path| read(TlsFile::ClientCa, path))
                .transpose()?,
        })
    }

    fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        (&self.cert, &self.key, &self.client_ca).hash(&mut hasher);
        hasher.finish()
    }

    /// rustls with the ring provider, TLS 1.2 and 1.3, ALPN h2 (gRPC).
    fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|_| problem(TlsFile::Cert, "not a PEM certificate chain"))?;
        if chain.is_empty() {
            return Err(problem(TlsFile::Cert, "holds no PEM certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|_| problem(TlsFile::Key, "not a PEM private key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| problem(TlsFile::Cert, &e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert =
                        cert.map_err(|_| problem(TlsFile::ClientCa, "not PEM certificates"))?;
                    roots
                        .add(cert)
                        .map_err(|e| problem(TlsFile::ClientCa, &e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|_| problem(TlsFile::ClientCa, "holds no usable CA certificate"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            problem(
                TlsFile::Key,
                &format!("does not go with the certificate: {e}"),
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| {
        problem(
            file,
            &format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })
}

fn problem(file: TlsFile, problem: &str) -> TlsError {
    TlsError {
        file,
        problem: problem.to_owned(),
    }
}
