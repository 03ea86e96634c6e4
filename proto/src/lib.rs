//! Outpost wire protocol.
//!
//! This crate owns everything two Outpost processes must agree on to talk:
//! message types ([`messages`]), the alert vocabulary ([`alert`]), the length-prefixed framing with its size
//! limit ([`frame`]), the single bincode configuration ([`codec`]), the
//! protocol version and ALPN identifiers, metric naming ([`metric_names`]),
//! and the certificate identities and TLS configurations that carry device
//! and site identity ([`pki`], [`tls`]), and the device session's
//! I/O-free state machines ([`session`]).
//!
//! It must not open sockets, touch storage or spawn tasks: everything here
//! works on byte buffers and values so it can be tested without I/O.

pub mod alert;
pub mod backoff;
pub mod codec;
pub mod command;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod metric_names;
#[cfg(feature = "tls")]
pub mod pki;
pub mod script;
pub mod session;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transfer;

pub use ids::{CommandId, CustomerId, DeviceId, ParseIdError, SiteId, TenantId, TransferId};

/// Version of the enrollment protocol (`EnrollRequest`), and the session
/// protocol of agents that predate commands (records only). An appliance
/// refuses an enrollment of another version with
/// [`messages::EnrollRejectReason::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Highest session protocol this build speaks: 2 adds the command and file
/// flows to the records of 1, 3 adds the appliance's back-pressure frame
/// (`Pressure`, see [`session::pressure`]) (see [`session`]). An agent
/// offers it in `Hello`; the appliance answers in `Welcome` with the
/// highest version both speak.
pub const SESSION_PROTOCOL_VERSION: u16 = 3;

/// Lowest session protocol an appliance accepts: agents of protocol 1 keep
/// streaming records (they get no commands). Below it, the appliance
/// refuses the session with [`messages::CloseReason::UnsupportedVersion`].
pub const MIN_SESSION_PROTOCOL_VERSION: u16 = 1;

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
