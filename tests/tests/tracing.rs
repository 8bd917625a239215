//! One trace across both services: a caller's W3C `traceparent` is
//! adopted by the registry, carried to crypto-service, and both export
//! their spans over OTLP to a collector (an in-process OTLP receiver here).

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use proto::v1 as pb;
use tests::Launch;
use tests::stack::Stack;
use tokio_stream::wrappers::TcpListenerStream;

/// (service.name, trace id hex, span name) of every exported span.
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

#[derive(Clone, Default)]
struct Collector {
    spans: Spans,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), hex::encode(&span.trace_id), span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn a_create_provider_is_one_trace_across_registry_and_crypto() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let collector = Collector::default();
    let spans = Arc::clone(&collector.spans);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let otlp = |launch: Launch| launch.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone());
    let stack = Stack::launch(otlp(Launch::default()), otlp(Stack::default_registry())).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let channel = stack.channel_as("tracer", "acme", &["admin"]).await;
    let mut request = tonic::Request::new(pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: "traced".into(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4".into(),
            api_key: "sk-traced-0001".into(),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    pb::provider_service_client::ProviderServiceClient::new(channel)
        .create_provider(request)
        .await
        .expect("create");

    // Stopping the services flushes their exporters.
    stack.finish().await;
    let spans = spans.lock().expect("lock").clone();
    let in_trace = |service: &str, name: &str| {
        spans
            .iter()
            .any(|(s, t, n)| s.contains(service) && t == trace_id && n == name)
    };
    assert!(
        in_trace(
            "registry-service",
            "/agentregistry.v1.ProviderService/CreateProvider"
        ),
        "the registry's span joins the caller's trace: {spans:?}"
    );
    assert!(
        in_trace(
            "crypto-service",
            "/agentregistry.crypto.v1.CryptoService/Encrypt"
        ),
        "crypto-service's span is in the same trace: {spans:?}"
    );
    let exported = format!("{spans:?}");
    assert!(
        !exported.contains("sk-traced-0001"),
        "no secret in any span"
    );
}
