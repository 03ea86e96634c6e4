//! Local users of the appliance: people who sign in to the admin listener
//! with a name and a password (the CLI, the console), each with a
//! [`Role`](outpost_web::login::Role) (viewer < technician < admin), beside
//! the admin bearer token (which is an admin).
//!
//! * [`store`]: the `users` and `sessions` tables and every read and write
//!   of them (a session is stored by the SHA-256 of its secret, never the
//!   secret);
//! * [`auth`]: who a request is ([`auth::Caller`]: the admin token or a
//!   session cookie), what each route needs ([`auth::required_role`]),
//!   logins (rate limits, argon2 on a bounded pool) and logouts
//!   ([`auth::Auth`]).
//!
//! The HTTP handlers are in [`crate::api`] (`users.rs`), the CLI in
//! [`crate::cli`] (`users.rs`). Nothing here touches another subsystem's
//! tables except the audit log.

pub mod auth;
pub mod store;
