//! The operations API: every call of the handle over HTTP (`serve`'s `/v1/...`), its client (the
//! CLI's way to a running `serve`, and forwarding between the hosts of a fleet), and the shapes
//! both use. docs/serve.md documents the requests and answers.

pub mod client;
pub mod server;
pub mod wire;
