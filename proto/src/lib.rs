//! Outpost wire protocol.
//!
//! This crate owns everything two Outpost processes must agree on to talk:
//! message types ([`messages`]), the alert vocabulary ([`alert`]), the length-prefixed framing with its size
//! limit ([`frame`]), the single bincode configuration ([`codec`]), the
//! protocol version and ALPN identifiers, metric naming ([`metric_names`]),
//! and the certificate identities and TLS configurations that carry device
//! and site identity ([`pki`], [`tls`]).
//!
//! It must not open sockets, touch storage or spawn tasks: everything here
//! works on byte buffers and values so it can be tested without I/O.

pub mod alert;
pub mod backoff;
pub mod codec;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod metric_names;
pub mod pki;
pub mod tls;

pub use ids::{CustomerId, DeviceId, ParseIdError, SiteId, TenantId};

/// Version of the session and enrollment protocol spoken by this build.
///
/// Peers exchange it in `Hello`/`Welcome` and `EnrollRequest`; a peer that
/// speaks a different major version is refused with
/// [`messages::CloseReason::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN for enrollment connections (server-authenticated TLS only; the agent
/// pins the appliance CA by fingerprint).
pub const ALPN_ENROLL: &[u8] = b"outpost-enroll/1";

/// ALPN for agent sessions (mutual TLS; the device identity comes from the
/// client certificate).
pub const ALPN_SESSION: &[u8] = b"outpost-session/1";

/// Default maximum size of one frame's payload, in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// TLS server name every agent uses to reach its appliance. The appliance's
/// server certificate carries it as a DNS SAN; since agents pin the
/// appliance's own CA, a fixed name is safe and keeps working when the
/// appliance's IP address or host name changes.
pub const APPLIANCE_SERVER_NAME: &str = "outpost-appliance";
