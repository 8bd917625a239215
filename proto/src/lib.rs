//! The agentregistry gRPC contract as Rust types.
//!
//! This is the only place the generated code is included. The `.proto` files
//! beside this crate are the public contract that clients in other languages
//! generate their code from; this crate gives the Rust services the same
//! types plus the encoded file descriptor set for server reflection.

/// Encoded `FileDescriptorSet` of every agentregistry `.proto` file (and the
/// well-known types they import), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

/// `agentregistry.v1`: agents, providers, their versions and the runtime view.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)] // generated code
    tonic::include_proto!("agentregistry.v1");
}

/// `agentregistry.crypto.v1`: the crypto-service contract.
pub mod crypto {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)] // generated code
    tonic::include_proto!("agentregistry.crypto.v1");
}
