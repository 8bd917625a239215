//! GETs a small JSON document from the identity provider: the OIDC
//! discovery document and the JWKS.
//!
//! HTTPS only (plain HTTP to a loopback address only in development mode),
//! trusting the Mozilla roots bundled by `webpki-roots` plus an optional CA
//! file; one HTTP/1.1 request per connection (a fetch happens every few
//! minutes, not worth a pool); no redirects; the whole exchange within a
//! timeout and the body within [`MAX_BODY_BYTES`], so a slow or hostile
//! endpoint costs a bounded wait and a bounded buffer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::error::Error;

/// The largest discovery document or JWKS accepted: real ones are a few
/// KiB (a JWKS of ten 4096-bit RSA keys is about 8 KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// An absolute `https://` (or development `http://` loopback) URL, checked
/// once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    uri: Uri,
    tls: bool,
    host: String,
    port: u16,
}

impl Url {
    /// Parses `text`; `allow_loopback_http` lets `http://` through for a
    /// loopback host (development mode). The problem, for a start-up error.
    pub fn parse(text: &str, allow_loopback_http: bool) -> Result<Self, String> {
        let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{text:?} is not an https:// URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{text:?} carries user information"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let url = Self {
            uri,
            tls,
            host,
            port,
        };
        let plaintext_allowed = allow_loopback_http && url.is_loopback();
        if !(tls || plaintext_allowed) {
            return Err(format!(
                "{text:?} is not https://: keys must come over TLS (plain http:// only to a \
                 loopback address in development mode, REGISTRY_DEV)"
            ));
        }
        Ok(url)
    }

    /// The URL as given.
    pub fn as_str(&self) -> String {
        self.uri.to_string()
    }

    fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// What a GET brought back.
#[derive(Debug)]
pub struct Fetched {
    /// The body, parsed.
    pub json: serde_json::Value,
    /// `Cache-Control: max-age`, when the server sent one.
    pub max_age: Option<Duration>,
}

/// Makes the GETs; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher trusting the bundled roots and the certificates in
    /// `extra_ca_pem` (from the setting `ca_setting`), giving each GET
    /// `timeout` in all.
    pub fn new(
        extra_ca: Option<&Path>,
        ca_setting: &str,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(
                    ca_setting,
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|_| Error::config(ca_setting, "not PEM certificates"))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::config(ca_setting, format!("unusable CA: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::config(ca_setting, "holds no PEM certificate"));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(ca_setting, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// GETs `url` and parses the body as JSON. Errors are
    /// `Error::Unavailable` with a detail for the log (no body content).
    pub async fn get_json(&self, url: &Url) -> Result<Fetched, Error> {
        let unavailable = |detail: String| Error::Unavailable {
            dependency: "identity provider",
            detail: format!("GET {}: {detail}", url.as_str()),
        };
        let (status, max_age, body) = tokio::time::timeout(self.timeout, self.get(url))
            .await
            .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(unavailable)?;
        if status != StatusCode::OK {
            return Err(unavailable(format!("answered {status}")));
        }
        let json = serde_json::from_slice(&body)
            .map_err(|_| unavailable("the body is not JSON".to_owned()))?;
        Ok(Fetched { json, max_age })
    }

    async fn get(&self, url: &Url) -> Result<(StatusCode, Option<Duration>, Bytes), String> {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect: {}", e.kind()))?;
        if url.tls {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| format!("{:?} is not a DNS name or IP address", url.host))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(tls, url).await
        } else {
            exchange(tcp, url).await
        }
    }
}

/// One request over `io`, the connection driven beside it and dropped
/// with it.
async fn exchange<T>(io: T, url: &Url) -> Result<(StatusCode, Option<Duration>, Bytes), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let connection = AbortOnDrop(tokio::spawn(connection));
    let path = url
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = url
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let request = hyper::Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "agentregistry-registry-service")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status();
    let max_age = response
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|value| value.to_str().ok())
        .and_then(max_age);
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(format!("the body is larger than {MAX_BODY_BYTES} bytes"));
    }
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| format!("the body is larger than {MAX_BODY_BYTES} bytes or broken"))?
        .to_bytes();
    drop(connection);
    Ok((status, max_age, body))
}

/// `max-age` of a `Cache-Control` value; `no-cache` / `no-store` read as
/// zero (the caller's lower bound applies).
fn max_age(value: &str) -> Option<Duration> {
    let mut found = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            found = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    found
}

/// Aborts the connection task when the exchange ends or is cancelled (by
/// the timeout), so no connection outlives its fetch.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_development_loopback_http_is_accepted() {
        assert!(Url::parse("https://idp.example.com/realms/x", false).is_ok());
        assert!(Url::parse("http://idp.example.com/", false).is_err());
        assert!(Url::parse("http://idp.example.com/", true).is_err());
        assert!(Url::parse("http://127.0.0.1:8080/", false).is_err());
        assert!(Url::parse("http://127.0.0.1:8080/", true).is_ok());
        assert!(Url::parse("http://[::1]:8080/", true).is_ok());
        assert!(Url::parse("https://user:pw@idp.example.com/", false).is_err());
        assert!(Url::parse("ftp://idp.example.com/", false).is_err());
        assert!(Url::parse("/relative", false).is_err());
    }

    /// Serves one connection on loopback: reads the request head, then
    /// writes `answer` (and, if given, `chunks` of the body, chunked).
    async fn serve_once(answer: &'static [u8], chunks: usize) -> Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let _ = stream.write_all(answer).await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            for _ in 0..chunks {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            // Held open: the client decides when it is done.
            let _ = stream.read(&mut head).await;
        });
        Url::parse(&format!("http://{address}/jwks"), true).expect("url")
    }

    fn fetcher(timeout: Duration) -> Fetcher {
        Fetcher::new(None, "TEST", timeout).expect("fetcher")
    }

    fn detail(result: Result<Fetched, Error>) -> String {
        match result.expect_err("refused") {
            Error::Unavailable { detail, .. } => detail,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_small_json_answer_is_read_with_its_max_age() {
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=120\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}",
            0,
        )
        .await;
        let fetched = fetcher(Duration::from_secs(5))
            .get_json(&url)
            .await
            .expect("fetched");
        assert_eq!(fetched.json, serde_json::json!({"keys": []}));
        assert_eq!(fetched.max_age, Some(Duration::from_secs(120)));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_redirects_and_silence_are_refused() {
        let declared = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n", 0).await;
        let refused = detail(fetcher(Duration::from_secs(5)).get_json(&declared).await);
        assert!(refused.contains("larger than 1048576 bytes"), "{refused}");

        // 17 chunks of 64 KiB: over 1 MiB without saying so up front.
        let chunked =
            serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 17).await;
        let refused = detail(fetcher(Duration::from_secs(5)).get_json(&chunked).await);
        assert!(refused.contains("larger than 1048576 bytes"), "{refused}");

        let redirect = serve_once(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
            0,
        )
        .await;
        let refused = detail(fetcher(Duration::from_secs(5)).get_json(&redirect).await);
        assert!(refused.contains("answered 302"), "{refused}");

        let silent = serve_once(b"", 0).await;
        let started = std::time::Instant::now();
        let refused = detail(fetcher(Duration::from_millis(300)).get_json(&silent).await);
        assert!(refused.contains("no answer within"), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
