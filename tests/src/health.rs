//! grpc.health.v1 from a test's side: one status now, or waiting on the
//! Watch stream (with a deadline) until a service reports the status wanted.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a service may take to reach the status a test waits for.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(30);

/// Waits on Health/Watch until `service` (`""` = the registry's readiness)
/// reports `wanted`; panics after [`HEALTH_DEADLINE`].
pub async fn wait_for_status(channel: Channel, service: &str, wanted: ServingStatus) {
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("watch")
        .into_inner();
    let reached = tokio::time::timeout(HEALTH_DEADLINE, async {
        while let Some(update) = stream.message().await.expect("health update") {
            if update.status() == wanted {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(reached, Ok(true), "{service:?} never reported {wanted:?}");
}

/// The status Health/Check answers for `service` now.
pub async fn check(channel: Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("check")
        .into_inner()
        .status()
}
