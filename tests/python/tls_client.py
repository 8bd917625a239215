"""A Python grpcio client that reaches the registry over TLS: it trusts only
the CA given (ssl_channel_credentials), optionally presents a client
certificate, asks grpc.health.v1 for `liveness`, then lists agents with a
bearer token through a generic unary call (raw bytes: an empty
ListAgentsRequest is zero bytes). Prints one line per step; a failed call
prints its status code. Started by tests/tests/registry_tls.rs."""

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def read(path):
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True, help="HOST:PORT of the TLS listener")
    parser.add_argument("--ca", required=True, help="PEM CA the server certificate chains to")
    parser.add_argument("--token", required=True)
    parser.add_argument("--cert", help="PEM client certificate")
    parser.add_argument("--key", help="PEM key of the client certificate")
    args = parser.parse_args()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    with grpc.secure_channel(args.registry, credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=10
            )
        except grpc.RpcError as error:
            print(f"health error {error.code().name}")
            return
        print(f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        list_agents = channel.unary_unary("/agentregistry.v1.AgentService/ListAgents")
        list_agents(b"", metadata=[("authorization", f"Bearer {args.token}")], timeout=10)
        print("list agents OK")
        try:
            list_agents(b"", timeout=10)
            print("list agents without a token OK")
        except grpc.RpcError as error:
            print(f"list agents without a token {error.code().name}")


if __name__ == "__main__":
    main()
