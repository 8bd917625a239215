//! CORS for browsers that call the registry over grpc-web from a page of
//! another origin (`REGISTRY_GRPC_WEB_ALLOWED_ORIGINS`).
//!
//! A browser sends a grpc-web call (`content-type:
//! application/grpc-web+proto`, `x-grpc-web`, `authorization`) to another
//! origin only after a preflight (`OPTIONS`) says that origin may. This
//! layer answers every `OPTIONS` itself, before anything looks for a token
//! (a preflight carries none), and grants only the configured origins,
//! compared byte for byte with the request's one `Origin` header: any other
//! origin, a repeated `Origin` or none at all gets a preflight answer
//! without a single `Access-Control-*` header, which the browser takes as
//! a refusal. The answer is the same few constant headers whatever was
//! sent, so a long or repeated `Origin` costs a comparison and nothing
//! else. No `Access-Control-Allow-Credentials`: the token travels in the
//! `authorization` header the page sets, never in a cookie, and an origin
//! is never granted as `*`.
//!
//! CORS protects browser users from other pages, not the server from
//! anyone: a call without an `Origin` (a native client) or from the same
//! origin passes as before, and calls still need a token.
//!
//! Written here rather than taken from tower-http (not otherwise in the
//! build), whose CORS layer sends its allowed methods and headers in every
//! preflight answer, to any origin, and reads only the first of repeated
//! `Origin` headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::error::Error;

/// Request headers a grpc-web call from a browser may carry: the token,
/// the grpc-web content type and marker, the client's name, the deadline,
/// and a W3C trace context (the registry continues a caller's trace).
const ALLOW_HEADERS: &str =
    "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, traceparent, tracestate";

/// Response headers a page may read: a call's status, message and rich
/// error details, which a failed call sends in the response headers.
const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// The only method a grpc-web call uses.
const ALLOW_METHODS: &str = "POST";

/// How long a browser may reuse a preflight answer, in seconds.
const MAX_AGE_SECONDS: &str = "600";

/// The origins (`scheme://host[:port]`, as browsers send them) whose pages
/// may call the registry over grpc-web. Empty: none.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<[HeaderValue]>);

impl AllowedOrigins {
    /// From the setting's comma-separated entries: exact `http://` or
    /// `https://` origins, without path or default port; `*` and `null`
    /// are refused. Host names are compared in lowercase, as browsers send
    /// them. `setting` names the setting in errors.
    pub fn parse(entries: &[String], setting: &str) -> Result<Self, Error> {
        let origins = entries
            .iter()
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                check_origin(&entry)
                    .and_then(|()| HeaderValue::from_str(&entry).map_err(|_| "not a header value"))
                    .map_err(|problem| Error::config(setting, format!("{entry:?}: {problem}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(origins.into()))
    }

    /// How many origins are allowed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request's origin when it is one of these: exactly one `Origin`
    /// header, equal to an allowed origin.
    fn granted(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let origin = origins.next()?;
        if origins.next().is_some() {
            return None;
        }
        self.0.iter().find(|allowed| *allowed == origin).cloned()
    }
}

/// Answers preflights and adds CORS headers to calls from allowed origins.
#[derive(Debug, Clone)]
pub struct CorsLayer {
    origins: AllowedOrigins,
}

impl CorsLayer {
    /// A layer granting `origins`.
    pub fn new(origins: AllowedOrigins) -> Self {
        Self { origins }
    }
}

impl<S> tower::Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cors {
            inner,
            origins: self.origins.clone(),
        }
    }
}

/// A service behind [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    origins: AllowedOrigins,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Cors<S>
where
    S: tower::Service<http::Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // No gRPC or grpc-web call is an OPTIONS request: each is a
        // preflight (or nothing of ours), answered here.
        if request.method() == Method::OPTIONS {
            let response = preflight(self.origins.granted(request.headers()));
            return Either::Right(Box::pin(std::future::ready(Ok(response))));
        }
        // A native gRPC client sends no Origin: its calls pass untouched.
        if !request.headers().contains_key(header::ORIGIN) {
            return Either::Left(self.inner.call(request));
        }
        let granted = self.origins.granted(request.headers());
        let response = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            headers.append(header::VARY, HeaderValue::from_static("origin"));
            if let Some(origin) = granted {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(EXPOSE_HEADERS),
                );
            }
            Ok(response)
        }))
    }
}

/// The answer to a preflight: grants for an allowed origin, none otherwise.
fn preflight<R: Default>(granted: Option<HeaderValue>) -> Response<R> {
    let mut response = Response::new(R::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    // The answer depends on the Origin: caches must not share it.
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = granted {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECONDS),
        );
    }
    response
}

/// Checks one configured origin (already lowercase) is what a browser
/// sends: `http` or `https`, a host (a name, an IPv4 address or a
/// bracketed IPv6 one) and a port only when it is not the scheme's own.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" || origin == "null" {
        return Err("list exact origins: `*` and `null` are never allowed");
    }
    let (rest, default_port) = if let Some(rest) = origin.strip_prefix("https://") {
        (rest, "443")
    } else if let Some(rest) = origin.strip_prefix("http://") {
        (rest, "80")
    } else {
        return Err("an origin starts with http:// or https://");
    };
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin is scheme://host[:port], with no path, query or user");
    }
    let (host, port) = match rest.rfind(':') {
        // A colon inside the brackets of an IPv6 address is not a port.
        Some(colon) if !rest[colon..].contains(']') => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    if let Some(port) = port {
        if port == default_port {
            return Err("browsers omit the scheme's default port: write the origin without it");
        }
        if port.is_empty()
            || port.starts_with('0')
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err("the port is not a number from 1 to 65535");
        }
    }
    let valid_host = match host.strip_prefix('[') {
        Some(inside) => inside.strip_suffix(']').is_some_and(|address| {
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        }),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    };
    if !valid_host {
        return Err("the host is not a host name or an IP address (write IDNs in punycode)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<AllowedOrigins, Error> {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        AllowedOrigins::parse(&entries, "REGISTRY_GRPC_WEB_ALLOWED_ORIGINS")
    }

    fn headers(origins: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for origin in origins {
            headers.append(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("test origin"),
            );
        }
        headers
    }

    #[test]
    fn origins_are_taken_as_browsers_send_them() {
        let origins = parse(&[
            " https://UI.example.com ",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "",
        ])
        .expect("valid origins");
        assert_eq!(origins.len(), 3);
        assert!(
            origins
                .granted(&headers(&["https://ui.example.com"]))
                .is_some()
        );
        assert!(origins.granted(&headers(&["http://[::1]:3000"])).is_some());
        assert!(parse(&[]).expect("empty").is_empty());
    }

    #[test]
    fn anything_but_an_exact_origin_is_refused_at_start_up() {
        for entry in [
            "*",
            "null",
            "ui.example.com",
            "ftp://ui.example.com",
            "https://ui.example.com/",
            "https://ui.example.com/app",
            "https://user@ui.example.com",
            "https://ui.example.com:443",
            "http://ui.example.com:80",
            "https://ui.example.com:",
            "https://ui.example.com:65536",
            "https://ui.example.com:08080",
            "https://*.example.com",
            "https://",
            "http://[::1",
        ] {
            let error = parse(&[entry]).expect_err(entry).to_string();
            assert!(
                error.contains("REGISTRY_GRPC_WEB_ALLOWED_ORIGINS"),
                "{entry}: {error}"
            );
        }
    }

    #[test]
    fn only_one_exactly_equal_origin_is_granted() {
        let origins = parse(&["https://ui.example.com"]).expect("valid");
        for refused in [
            &[][..],
            &["https://ui.example.com.evil.test"],
            &["https://ui.example.co"],
            &["http://ui.example.com"],
            &["https://UI.example.com"],
            &["https://ui.example.com", "https://ui.example.com"],
            &["https://evil.test", "https://ui.example.com"],
        ] {
            assert!(origins.granted(&headers(refused)).is_none(), "{refused:?}");
        }
    }

    #[test]
    fn a_refused_preflight_carries_no_grant() {
        let response: Response<()> = preflight(None);
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let names: Vec<&str> = response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["vary"]);
    }
}
