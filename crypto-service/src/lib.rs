//! crypto-service: the only agentregistry process that holds the master key.
//!
//! It encrypts, decrypts and rewraps provider credentials with AES-256-GCM
//! under a keyring of numbered key versions, and has no other state. See
//! `ARCHITECTURE.md` at the workspace root for how it fits with the registry.

pub mod audit;
pub mod batch_limit;
pub mod ciphertext;
pub mod config;
pub mod error;
pub mod fernet;
pub mod identity;
pub mod keyring;
pub mod server;
pub mod service;

pub use error::Error;
