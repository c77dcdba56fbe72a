//! The end-to-end suites of filestore-s3, in one test binary: real Postgres, real Redis and real
//! S3 servers (s3s-fs in-process, moto_server, any endpoint given by `FILESTORE_TEST_S3_*`).
//! One binary means one build and one link of the harness (`common`) for every suite. Run one
//! suite with `cargo test --test suite <module>::`, e.g. `cargo test --test suite crash::`.
//!
//! Two suites change what is global to a process (`security` installs a logger and a tracing
//! subscriber that capture everything; `tls` sets the CA variables): each of their tests runs in
//! a process of its own, this binary started again with only that test (`common::in_own_process`).

#[macro_use]
mod common;

mod adversarial;
mod check;
mod conformance;
mod crash;
mod credentials;
mod executor;
mod faults;
mod feed;
mod fleet;
mod hostile;
mod hosts;
mod mailbox;
mod multipart;
mod ownership;
mod random;
mod security;
mod serve;
mod tls;
mod transfer;
mod unknowns;
mod verification;
