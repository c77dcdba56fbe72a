//! filestore-s3: the S3 / object-storage executor of Filestore.
//!
//! Embed it in an actix (or plain tokio) host: [`S3Executor::start`] applies the migrations,
//! connects to Postgres, Redis and S3, and starts one supervisor actor per enabled mount in
//! `backend_mounts`. Every mutating call follows the operation protocol (validate → journal intent →
//! S3 → verify → one Postgres transaction → Redis); see `docs/filestore.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod config;
mod executor;
pub mod fleet;
pub mod http;
pub mod liveness;
mod options;
pub mod pg;
pub mod redact;
pub mod redis;
pub mod s3;
pub mod tls;

pub use config::{ExecutorConfig, FleetSettings};
/// The executor's actix face: messages for every operation and change-event subscriptions.
pub use executor::messages;
pub use executor::{
    progress_to_recipient, CheckOptions, CheckReport, DeleteManyOptions, DeleteOptions, FeedEvent,
    Finding, FollowOptions, GetOptions, GetResult, Health, ListOptions, Location, MountHealth,
    MountState, PutMode, PutOptions, Reach, S3Executor, TransferOptions, UploadProgressMsg,
    CHECK_REPORT_VERSION,
};
// What a host needs of the actors crate, and no more: the domain types its results carry, the
// errors it matches on, and the settings its configuration holds. The executor's own parts
// (supervisor, committer, engine) stay behind the handle and the messages.
pub use filestore_s3_actors::commands::{LeaseStatus, SupervisorStatus};
pub use filestore_s3_actors::model::{
    ChangeEvent, ListPage, Node, NodeMeta, OpKind, OpResult, Stat, UploadProgress, UserMetadata,
};
pub use filestore_s3_actors::mount::{MountConfigError, MountRow, MountSpec};
pub use filestore_s3_actors::multipart::ProgressSink;
pub use filestore_s3_actors::path::PathError;
pub use filestore_s3_actors::ports::{ByteRange, MetaError, StoreError, StoreErrorKind};
pub use filestore_s3_actors::store::{Outcome, S3Op};
pub use filestore_s3_actors::{Error, Sha256Digest, SupervisorSettings};
