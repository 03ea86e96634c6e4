//! Reconnect backoff (shared with the uplink; lives in `outpost-proto`).

pub use outpost_proto::backoff::{Backoff, jittered};
