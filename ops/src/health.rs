//! grpc.health.v1 as its specification describes it (tonic-health's
//! service ends a Watch on an unknown service at once and keeps every
//! Watch open through shutdown):
//!
//! - Check answers the status of a known service, NOT_FOUND otherwise.
//! - Watch sends the current status, then every change; on a service it
//!   does not know it sends SERVICE_UNKNOWN and stays open, sending the
//!   status if the service becomes known.
//! - [`Reporter::close_watches`] (at SIGTERM, after readiness went
//!   NOT_SERVING) ends every open Watch with UNAVAILABLE once it has sent
//!   the last status, so open streams do not hold the drain to its
//!   deadline; clients retry a Watch that ends (the specification says so).
//!
//! Statuses live in one `watch` channel: a handful of names that change
//! rarely. A Watch costs a task and nothing in the table, whatever name a
//! client asks for.
//!
//! Anyone who can connect may call it, with no token, so what a caller
//! can make it hold is bounded: a request is at most [`MAX_REQUEST_BYTES`]
//! (refused before it is decoded), a service name at most
//! [`MAX_SERVICE_NAME`] bytes (INVALID_ARGUMENT), and at most
//! [`MAX_WATCHES`] Watch streams are open at once (RESOURCE_EXHAUSTED):
//! with tonic's default 4 MiB limit a few connections of Watches naming
//! 4 MB services held over a gigabyte.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The largest health request decoded: a service name and its framing.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// The longest service name asked about: ours are under 64 bytes.
pub const MAX_SERVICE_NAME: usize = 256;

/// Most Watch streams open at once in the process.
pub const MAX_WATCHES: usize = 1024;

/// Every known status, and whether the Watch streams are to end.
#[derive(Debug, Default)]
struct Statuses {
    by_service: HashMap<String, ServingStatus>,
    closing: bool,
}

/// Sets the statuses the health service answers with. `""` (the whole
/// server) starts SERVING, as the specification expects of a server that
/// answers at all; set it otherwise before serving.
#[derive(Debug, Clone)]
pub struct Reporter {
    statuses: Arc<watch::Sender<Statuses>>,
}

impl Reporter {
    /// A reporter and the gRPC health service answering from it.
    pub fn new() -> (Self, HealthServer<Service>) {
        let mut statuses = Statuses::default();
        statuses
            .by_service
            .insert(String::new(), ServingStatus::Serving);
        let (sender, _) = watch::channel(statuses);
        let reporter = Self {
            statuses: Arc::new(sender),
        };
        let service = Service::of(&reporter);
        let server = HealthServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
        (reporter, server)
    }

    /// Sets `service`'s status (`""` is the whole server).
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.statuses.send_if_modified(|statuses| {
            let previous = statuses.by_service.insert(service.to_owned(), status);
            previous != Some(status)
        });
    }

    /// Ends every open Watch (each after its last status) and every Watch
    /// started from now on.
    pub fn close_watches(&self) {
        self.statuses
            .send_modify(|statuses| statuses.closing = true);
    }
}

/// The grpc.health.v1.Health service of a [`Reporter`].
#[derive(Debug)]
pub struct Service {
    statuses: Arc<watch::Sender<Statuses>>,
    /// One permit per open Watch.
    watches: Arc<Semaphore>,
}

impl Service {
    fn of(reporter: &Reporter) -> Self {
        Self {
            statuses: Arc::clone(&reporter.statuses),
            watches: Arc::new(Semaphore::new(MAX_WATCHES)),
        }
    }
}

/// The name a request asks about, when it is not too long to be one.
fn service_name(request: &HealthCheckRequest) -> Result<&str, tonic::Status> {
    if request.service.len() > MAX_SERVICE_NAME {
        return Err(tonic::Status::invalid_argument(format!(
            "service: must be at most {MAX_SERVICE_NAME} bytes"
        )));
    }
    Ok(&request.service)
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Service {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let service = service_name(request.get_ref())?;
        let status = self.statuses.borrow().by_service.get(service).copied();
        match status {
            Some(status) => Ok(tonic::Response::new(response(status))),
            None => Err(tonic::Status::not_found("unknown service")),
        }
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let service = service_name(request.get_ref())?.to_owned();
        let permit = Arc::clone(&self.watches).try_acquire_owned().map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "this server has {MAX_WATCHES} health watches open, its most; use Check or \
                     try again later"
            ))
        })?;
        let mut statuses = self.statuses.subscribe();
        let (updates, stream) = mpsc::channel(1);
        tokio::spawn(async move {
            // Held until the Watch ends.
            let _permit = permit;
            let mut sent = None;
            loop {
                let (status, closing) = {
                    let now = statuses.borrow_and_update();
                    let status = now
                        .by_service
                        .get(&service)
                        .copied()
                        .unwrap_or(ServingStatus::ServiceUnknown);
                    (status, now.closing)
                };
                if sent != Some(status) {
                    if updates.send(Ok(response(status))).await.is_err() {
                        return;
                    }
                    sent = Some(status);
                }
                if closing {
                    let _ = updates
                        .send(Err(tonic::Status::unavailable("server shutting down")))
                        .await;
                    return;
                }
                tokio::select! {
                    changed = statuses.changed() => if changed.is_err() { return },
                    () = updates.closed() => return,
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(stream)))
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_server::Health;

    fn watch_request(service: &str) -> tonic::Request<HealthCheckRequest> {
        tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        })
    }

    #[tokio::test]
    async fn an_unknown_service_is_watched_until_it_is_known_and_watches_end_when_closed() {
        let (reporter, server) = Reporter::new();
        let service = Service::of(&reporter);
        drop(server);
        let mut stream = service
            .watch(watch_request("later"))
            .await
            .expect("watch")
            .into_inner();
        let first = stream.next().await.expect("a first status").expect("ok");
        assert_eq!(first.status(), ServingStatus::ServiceUnknown);
        reporter.set("later", ServingStatus::NotServing);
        let known = stream.next().await.expect("the status").expect("ok");
        assert_eq!(known.status(), ServingStatus::NotServing);
        reporter.set("later", ServingStatus::NotServing);
        reporter.close_watches();
        let end = stream.next().await.expect("the end").expect_err("ends");
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_long_name_is_refused_and_watches_are_bounded() {
        let (reporter, _server) = Reporter::new();
        let service = Service::of(&reporter);
        let long = "s".repeat(MAX_SERVICE_NAME + 1);
        let refused = service
            .check(watch_request(&long))
            .await
            .expect_err("too long a name");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let refused = service
            .watch(watch_request(&long))
            .await
            .expect_err("too long a name");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);

        let mut open = Vec::new();
        for _ in 0..MAX_WATCHES {
            open.push(service.watch(watch_request("")).await.expect("watch"));
        }
        let refused = service
            .watch(watch_request(""))
            .await
            .expect_err("one watch too many");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // A Watch that ends gives its place back.
        let mut ended = open.pop().expect("a watch").into_inner();
        let first = ended.next().await.expect("a status").expect("ok");
        assert_eq!(first.status(), ServingStatus::Serving);
        drop(ended);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while service.watch(watch_request("")).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place never came back"
            );
            tokio::task::yield_now().await;
        }
    }
}
