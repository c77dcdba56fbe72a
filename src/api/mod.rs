//! The operations API's client (the CLI's way to a running `serve`, and forwarding between the
//! hosts of a fleet) and the shapes it shares with the server (`crate::http::ops`, `serve`'s
//! `/v1/...`). docs/serve.md documents the requests and answers.

pub mod client;
pub mod wire;
