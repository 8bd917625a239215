//! registry-service: CrewAI agents and LLM providers with an immutable
//! version history, over gRPC, stored through sea-orm in SQLite or
//! PostgreSQL. It never holds key material: provider API keys are encrypted
//! and decrypted by crypto-service. See `ARCHITECTURE.md` for the map.

pub mod api;
pub mod auth;
pub mod caller;
pub mod commands;
pub mod config;
pub mod cors;
pub mod crypto;
pub mod destinations;
pub mod error;
pub mod filter;
pub mod import;
pub mod model;
pub mod page;
pub mod readiness;
pub mod retention;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tenant_limits;
pub mod verify;
pub mod watch;

pub use error::Error;
