#!/usr/bin/env python3
"""deploy/envoy/envoy.yaml read as Envoy reads it: a v3 Bootstrap.

No Envoy binary is packaged for Debian, PyPI or npm, so `envoy --mode
validate` cannot run in the suite. This does the part of it that needs only
Envoy's API: the YAML is parsed into envoy.config.bootstrap.v3.Bootstrap
with the proto3 JSON mapping, the way Envoy loads a YAML bootstrap, with
Envoy's own message types (PyPI `xds-protos`, generated from
envoyproxy/data-plane-api). An unknown field, a misspelt `@type`, a value of
the wrong type or an unknown enum name fails the parse. Each typed_config is
then unpacked into its message to check what Envoy would use: the filters'
names match their types, the transcoder names the descriptor set and its
services, the upstream speaks HTTP/2 over TLS.

On success it prints exactly one final line:

    envoy config: all N checks passed

Needs: pip install xds-protos pyyaml
"""

from __future__ import annotations

import sys

import yaml
from google.protobuf import json_format

# Every message type the config names by `@type` must be in the default
# pool before the parse resolves it: importing its module registers it.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2


class CheckFailed(Exception):
    pass


class Checks:
    def __init__(self) -> None:
        self.count = 0

    def that(self, condition: bool, what: str) -> None:
        if not condition:
            raise CheckFailed(what)
        self.count += 1
        print(f"ok {self.count}: {what}")

    def equal(self, got, want, what: str) -> None:
        if got != want:
            raise CheckFailed(f"{what}: got {got!r}, want {want!r}")
        self.count += 1
        print(f"ok {self.count}: {what} == {want!r}")


def unpack(any_message, cls):
    message = cls()
    if not any_message.Unpack(message):
        raise CheckFailed(f"{any_message.type_url} is not {cls.DESCRIPTOR.full_name}")
    return message


def main(path: str) -> int:
    checks = Checks()
    with open(path, encoding="utf-8") as file:
        document = yaml.safe_load(file)
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(document, bootstrap)
    except json_format.ParseError as error:
        raise CheckFailed(f"{path} is not a valid Envoy v3 bootstrap: {error}") from error
    checks.that(True, f"{path} parses as envoy.config.bootstrap.v3.Bootstrap")

    listeners = bootstrap.static_resources.listeners
    checks.equal(len(listeners), 1, "listeners")
    chain = listeners[0].filter_chains[0]
    checks.equal(chain.transport_socket.name, "envoy.transport_sockets.tls", "listener transport")
    downstream = unpack(chain.transport_socket.typed_config, tls_pb2.DownstreamTlsContext)
    checks.that(len(downstream.common_tls_context.tls_certificates) == 1, "listener has its certificate")
    network = chain.filters[0]
    manager = unpack(network.typed_config, hcm_pb2.HttpConnectionManager)
    checks.equal(
        network.name,
        "envoy.filters.network.http_connection_manager",
        "network filter name",
    )

    # Each HTTP filter's name is the one its type is registered under.
    expected = [
        ("envoy.filters.http.cors", cors_pb2.Cors),
        ("envoy.filters.http.grpc_web", grpc_web_pb2.GrpcWeb),
        ("envoy.filters.http.grpc_json_transcoder", transcoder_pb2.GrpcJsonTranscoder),
        ("envoy.filters.http.router", router_pb2.Router),
    ]
    checks.equal(
        [f.name for f in manager.http_filters],
        [name for name, _ in expected],
        "HTTP filters in order",
    )
    configs = {}
    for http_filter, (name, cls) in zip(manager.http_filters, expected):
        configs[name] = unpack(http_filter.typed_config, cls)
        checks.that(True, f"{name} carries a {cls.DESCRIPTOR.full_name}")

    transcoder = configs["envoy.filters.http.grpc_json_transcoder"]
    checks.equal(
        transcoder.WhichOneof("descriptor_set"), "proto_descriptor", "transcoder reads a descriptor file"
    )
    checks.equal(
        sorted(transcoder.services),
        sorted(
            [
                "agentregistry.v1.AgentService",
                "agentregistry.v1.ProviderService",
                "agentregistry.v1.RuntimeService",
                "agentregistry.v1.KeyService",
                "agentregistry.v1.WatchService",
                "agentregistry.v1.LabelPolicyService",
                "agentregistry.v1.AuditService",
            ]
        ),
        "transcoder services",
    )
    checks.that(transcoder.print_options.preserve_proto_field_names, "snake_case JSON")
    checks.that(transcoder.convert_grpc_status, "gRPC status converted for REST clients")

    host = manager.route_config.virtual_hosts[0]
    cors = unpack(
        host.typed_per_filter_config["envoy.filters.http.cors"], cors_pb2.CorsPolicy
    )
    checks.that(len(cors.allow_origin_string_match) > 0, "CORS names its origins")
    checks.that("grpc-status-details-bin" in cors.expose_headers, "CORS exposes the status details")

    cluster_name = host.routes[0].route.cluster
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    checks.that(cluster_name in clusters, f"route cluster {cluster_name} defined")
    cluster = clusters[cluster_name]
    options = unpack(
        cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
        http_protocol_options_pb2.HttpProtocolOptions,
    )
    checks.that(options.explicit_http_config.HasField("http2_protocol_options"), "upstream HTTP/2")
    checks.equal(cluster.transport_socket.name, "envoy.transport_sockets.tls", "upstream transport")
    tls = unpack(cluster.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    checks.equal(list(tls.common_tls_context.alpn_protocols), ["h2"], "upstream ALPN")
    checks.that(
        tls.common_tls_context.validation_context.trusted_ca.filename != "",
        "upstream certificate verified against a CA",
    )

    print(f"envoy config: all {checks.count} checks passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: envoy_config.py ENVOY_YAML", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1]))
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
