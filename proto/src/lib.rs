//! The agentregistry gRPC contract as Rust types.
//!
//! This is the only place the generated code is included. The `.proto` files
//! beside this crate are the public contract that clients in other languages
//! generate their code from; this crate gives the Rust services the same
//! types plus the encoded file descriptor set for server reflection.
//!
//! The messages that hold a secret (a provider's API key, a plaintext, a
//! legacy token) have a hand-written `Debug` that prints every field but
//! the secret, which shows only as `<redacted>` (or `""` when empty): a
//! request or response logged with `{:?}` never carries a key.

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

/// How a secret field prints in `Debug`.
struct Redacted(bool);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "\"\"" } else { "<redacted>" })
    }
}

/// `Debug` for a message with secret fields. The destructuring lists every
/// field, so a field added to the message fails to compile here until it
/// is placed among the shown or the secret ones.
macro_rules! debug_without_secrets {
    ($message:ty, shown: [$($shown:ident),* $(,)?], secret: [$($secret:ident),* $(,)?]) => {
        impl std::fmt::Debug for $message {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let Self { $($shown,)* $($secret,)* } = self;
                let mut out = f.debug_struct(stringify!($message));
                $(out.field(stringify!($shown), $shown);)*
                $(out.field(stringify!($secret), &Redacted($secret.is_empty()));)*
                out.finish()
            }
        }
    };
}

debug_without_secrets!(
    v1::Provider,
    shown: [
        id, name, provider_type, model_name, base_url, api_version, default_parameters,
        is_default, api_key_set, api_key_revision, version, etag, create_time, update_time,
        created_by, updated_by, labels, delete_time, purge_time, validated_diff,
    ],
    secret: [api_key]
);
debug_without_secrets!(
    v1::ResolvedAgent,
    shown: [
        agent, provider, effective, agent_version, provider_version, etag, not_modified, label,
    ],
    secret: [api_key]
);
debug_without_secrets!(
    crypto::EncryptRequest,
    shown: [associated_data],
    secret: [plaintext]
);
debug_without_secrets!(
    crypto::DecryptResponse,
    shown: [key_version],
    secret: [plaintext]
);
debug_without_secrets!(
    crypto::ImportFernetItem,
    shown: [associated_data],
    secret: [token]
);

#[cfg(test)]
mod tests {
    use super::{crypto, v1};

    const SECRET: &str = "sk-live-do-not-print-0123456789";

    fn provider() -> v1::Provider {
        v1::Provider {
            id: "p-1".into(),
            name: "openai".into(),
            api_key: SECRET.into(),
            api_key_set: true,
            api_key_revision: 3,
            ..Default::default()
        }
    }

    /// Every message that holds a secret, alone and inside the messages
    /// that carry it, prints everything but the secret.
    #[test]
    fn debug_output_of_every_secret_holder_redacts_the_secret() {
        let printed = [
            format!("{:?}", provider()),
            format!(
                "{:?}",
                v1::CreateProviderRequest {
                    provider: Some(provider()),
                    ..Default::default()
                }
            ),
            format!(
                "{:#?}",
                v1::UpdateProviderRequest {
                    provider: Some(provider()),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::ResolvedAgent {
                    provider: Some(provider()),
                    api_key: SECRET.into(),
                    agent_version: 4,
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                crypto::EncryptBatchRequest {
                    items: vec![crypto::EncryptRequest {
                        plaintext: SECRET.as_bytes().to_vec(),
                        associated_data: b"acme|p-1|api_key".to_vec(),
                    }],
                }
            ),
            format!(
                "{:?}",
                crypto::DecryptBatchResponse {
                    items: vec![crypto::DecryptResponse {
                        plaintext: SECRET.as_bytes().to_vec(),
                        key_version: 2,
                    }],
                }
            ),
            format!(
                "{:?}",
                crypto::ImportFernetRequest {
                    items: vec![crypto::ImportFernetItem {
                        token: SECRET.into(),
                        associated_data: Vec::new(),
                    }],
                }
            ),
        ];
        // As text and as the bytes' decimal list a derived Debug prints.
        let as_bytes = format!("{:?}", SECRET.as_bytes());
        let as_bytes = as_bytes.trim_matches(['[', ']']);
        for text in &printed {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains(as_bytes), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
        // The rest is still there.
        assert!(printed[0].contains("api_key_revision: 3"), "{}", printed[0]);
        assert!(printed[3].contains("agent_version: 4"), "{}", printed[3]);
        assert!(printed[5].contains("key_version: 2"), "{}", printed[5]);
        // An empty secret says so.
        assert!(format!("{:?}", v1::Provider::default()).contains("api_key: \"\""));
    }
}
