//! Actors, messages, domain types and ports of the filestore-s3 executor.
//!
//! This crate has no AWS, Postgres or Redis dependency: the root crate `filestore-s3` supplies
//! adapters for the [`ports`]. See `docs/architecture.md` in the repository.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod commands;
pub mod committer;
pub mod digest;
mod engine;
pub mod error;
pub mod failpoint;
pub mod locks;
pub mod model;
pub mod mount;
pub mod multipart;
pub mod notifier;
pub mod path;
pub mod ports;
pub mod reads;
pub mod retry;
pub mod store;
pub mod store_error;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;

pub use digest::Sha256Digest;
pub use error::Error;
pub use supervisor::{MountSupervisor, SupervisorSettings};
