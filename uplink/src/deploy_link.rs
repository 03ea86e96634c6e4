//! The downlink of patch deployments: central → site orders (approvals,
//! approval rules, deployments and the actions on them) and site →
//! central progress, on the site's own uplink stream (protocol version 5,
//! [`crate::wire::DEPLOY_PROTOCOL_VERSION`]).
//!
//! This module owns the wire types only. Central keeps its orders and the
//! progress it heard (`outpost-central`'s `deploy` module); the appliance
//! applies orders through its approvals and orchestrator (`outpost`'s
//! `deploy::central` module). The frames travel through the same
//! [`crate::downlink::DownlinkPort`] as the commands'.
//!
//! The contract, both ends:
//!
//! * **Central's order id is the idempotency key.** The site records the
//!   id of every order it applied (durably, with the result) before it
//!   answers [`DeployAck`]; an order delivered again (reconnect, restart
//!   of either side, a resend) is answered from that record and never
//!   applied twice. A deployment created from central carries central's
//!   deployment id as its site id, so even a lost record cannot create it
//!   twice (the site's orchestrator refuses a second creation of an id).
//! * **Central is the source of truth of what is undelivered.** After
//!   every `Welcome` central sends every order of the site the site has
//!   not acknowledged, oldest first (a pause follows its creation).
//! * **Progress is the full, coalesced state.** The site sends at most one
//!   [`DeployProgress`] per deployment in flight, with the state as of
//!   `updated_at_ms`, at most once per [`PROGRESS_INTERVAL_MS`]; central
//!   keeps the newest (a stale report never moves it back) and answers
//!   [`DeployProgressAck`]. Deployments created at the site are reported
//!   too (central shows them read-only).
//!
//! Payloads that name appliance types (a rule, a create request, a
//! rollback scope, the progress view) are JSON text inside the bincode
//! frame: both ends already speak that JSON on their HTTP APIs, and a
//! field added there needs no new protocol version.

use serde::{Deserialize, Serialize};

/// Least time between two progress reports of one deployment.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Most bytes of a JSON payload in one order or progress report (bounded
/// well below the frame limit; a larger one is refused by its sender).
pub const MAX_DEPLOY_JSON_BYTES: usize = 8 * 1024 * 1024;

/// One order of central's for the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOrder {
    /// Central's id of the order (the idempotency key).
    pub id: String,
    /// Who asked at central (`NAME@central`), for the site's audit log.
    pub actor: String,
    pub kind: DeployOrderKind,
}

/// What an order asks of the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployOrderKind {
    /// Approve or decline one exact patch for a scope (the site API's
    /// `POST /api/v1/approvals` body: `patch` `PKG=VERSION`, `scope`
    /// `tenant`, `customer:C`, `tag:T`, `device:ID`; `verdict`
    /// `approve`|`decline`).
    Verdict {
        patch: String,
        scope: String,
        verdict: String,
    },
    /// Add an approval rule (the site's `ApprovalRule` JSON).
    AddRule { rule_json: String },
    /// Remove an approval rule by id (an unknown id is done already).
    RemoveRule { id: String },
    /// Create and start a deployment (the site's `CreateRequest` JSON; its
    /// `id` is central's deployment id).
    CreateDeployment { request_json: String },
    /// `pause`, `resume`, `abort` or `rollback` a deployment, with the
    /// site API's body of that action (JSON).
    Act {
        deployment: String,
        action: String,
        body_json: String,
    },
    /// Add and remove tags on devices of the site (protocol 9,
    /// [`crate::wire::TAGS_PROTOCOL_VERSION`]; appended last: an older
    /// site cannot decode it and is never sent one). `devices` are the
    /// site's device ids (16 hex digits); the site applies it to all of
    /// them or to none (an unknown device, a bad tag or a device over the
    /// site's tag limit refuses it, naming each device), with the order's
    /// id in the same write. Tags follow [`check_tag`].
    SetTags {
        devices: Vec<String>,
        add: Vec<String>,
        remove: Vec<String>,
    },
}

/// Most tags a device holds (the site API's limit).
pub const MAX_TAGS_PER_DEVICE: usize = 64;
/// Longest tag in bytes (the site API's limit).
pub const MAX_TAG_BYTES: usize = 64;
/// Most devices in one tag order (a larger selection is split by its
/// sender).
pub const MAX_TAG_ORDER_DEVICES: usize = 1_000;

/// Whether `t` is a tag both ends accept: 1 to [`MAX_TAG_BYTES`] bytes,
/// no control characters, no comma (tags travel comma-joined in audit
/// details and console forms), no leading or trailing space. Pure.
pub fn check_tag(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TAG_BYTES {
        return Err(format!("tag {t:?}: a tag has 1 to {MAX_TAG_BYTES} bytes"));
    }
    if t.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "tag {t:?}: no commas or control characters in a tag"
        ));
    }
    if t.trim() != t {
        return Err(format!("tag {t:?}: no leading or trailing spaces in a tag"));
    }
    Ok(())
}

/// A device's tags after adding `add` and removing `remove` (removal
/// wins over an addition of the same tag; order kept, new tags last, no
/// duplicates). Pure.
pub fn apply_tags(have: &[String], add: &[String], remove: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(have.len() + add.len());
    for t in have.iter().chain(add) {
        if !remove.contains(t) && !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

impl DeployOrderKind {
    /// Stable label (metrics, listings).
    pub fn label(&self) -> &'static str {
        match self {
            DeployOrderKind::Verdict { .. } => "verdict",
            DeployOrderKind::AddRule { .. } => "rule_add",
            DeployOrderKind::RemoveRule { .. } => "rule_remove",
            DeployOrderKind::CreateDeployment { .. } => "deployment",
            DeployOrderKind::Act { .. } => "action",
            DeployOrderKind::SetTags { .. } => "tags",
        }
    }
}

/// Least time between two looks at the site's per-device approval
/// decisions (protocol 9): the devices whose decisions changed since go
/// up ([`DeviceDecisions`]).
pub const DECISIONS_INTERVAL_MS: u64 = 10_000;
/// Most devices in one [`crate::wire::SiteFrame::ApprovalDecisions`].
pub const DECISIONS_PER_FRAME: usize = 256;
/// Most decision rows of one device sent (declined, deferred and
/// unapproved ones first; the cut is counted in `truncated`).
pub const MAX_DECISION_ROWS: usize = 1_000;

/// One device's approval decisions at the site (protocol 9,
/// [`crate::wire::TAGS_PROTOCOL_VERSION`]): for each missing patch, what
/// the site decided and which rule decided it, as the site's
/// `GET /api/v1/approvals/devices/{id}` (and its console's
/// `/approvals?device=ID`) shows them. A derived view, not an event: the
/// site sends a device's again when it changes and every device's once
/// per stream; central keeps the newest (`computed_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDecisions {
    /// The site's device id (16 hex digits).
    pub device: String,
    /// The site's time they were computed.
    pub computed_ms: u64,
    /// The device has a patch assessment (else `rows` is empty).
    pub assessed: bool,
    pub rows: Vec<DecisionUp>,
    /// Missing patches that cannot be named exactly (never approvable).
    pub unnamed: Vec<String>,
    /// Rows left out beyond [`MAX_DECISION_ROWS`].
    pub truncated: u32,
}

/// One missing patch of a device and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DecisionUp {
    /// `PKG=VERSION`.
    pub patch: String,
    /// `approved`, `declined`, `deferred` or `unapproved`.
    pub outcome: String,
    /// The deciding rule's id and scope (`RULE (SCOPE)`), if a rule did.
    pub rule: Option<String>,
    pub explanation: String,
}

impl DeviceDecisions {
    /// A hash of what the decisions say (not when they were computed):
    /// the site sends a device's again only when it changes. Pure.
    pub fn content_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.device,
            self.assessed,
            &self.rows,
            &self.unnamed,
            self.truncated,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// The site's answer to a [`DeployOrder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployAck {
    pub id: String,
    /// `None`: applied (and recorded) at the site. `Some`: refused for
    /// good, with the reason (unknown patch, nothing approved, a pause of
    /// a finished deployment...).
    pub refused: Option<String>,
}

/// Where one deployment of the site stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployProgress {
    /// The site's deployment id (central's id for one created there).
    pub deployment: String,
    /// The site's time of the state reported (a newer one wins).
    pub updated_at_ms: u64,
    /// Created from central (`true`) or at the site (a read-only mirror).
    pub from_central: bool,
    /// The progress view (JSON: phase, stage, gate figures per stage,
    /// per-device state and failure reason).
    pub view_json: String,
}

/// Central stored a [`DeployProgress`] (or holds a newer one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployProgressAck {
    pub deployment: String,
    pub updated_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CentralFrame, SiteFrame};

    #[test]
    fn a_tag_order_round_trips_and_appends_its_variant_last() {
        let f = CentralFrame::DeployOrders(vec![DeployOrder {
            id: "ord-2".into(),
            actor: "ann@central".into(),
            kind: DeployOrderKind::SetTags {
                devices: vec!["00000000000000aa".into()],
                add: vec!["web".into()],
                remove: vec!["old".into()],
            },
        }]);
        let b = outpost_proto::codec::encode(&f).unwrap();
        assert_eq!(outpost_proto::codec::decode::<CentralFrame>(&b).unwrap(), f);
        // The variant index after the five of protocol 5 (an older site's
        // decoder stops there: it is never sent one).
        let k = outpost_proto::codec::encode(&DeployOrderKind::SetTags {
            devices: vec![],
            add: vec![],
            remove: vec![],
        })
        .unwrap();
        assert_eq!(k[0], 5);
    }

    #[test]
    fn decisions_round_trip_and_their_hash_ignores_the_time_they_were_computed() {
        let d = DeviceDecisions {
            device: "00000000000000aa".into(),
            computed_ms: 5,
            assessed: true,
            rows: vec![DecisionUp {
                patch: "openssl=3.0.2-1".into(),
                outcome: "approved".into(),
                rule: Some("r-1 (tag:web)".into()),
                explanation: "security auto-approval".into(),
            }],
            unnamed: vec![],
            truncated: 0,
        };
        let f = SiteFrame::ApprovalDecisions(vec![d.clone()]);
        let b = outpost_proto::codec::encode(&f).unwrap();
        assert_eq!(outpost_proto::codec::decode::<SiteFrame>(&b).unwrap(), f);
        let later = DeviceDecisions {
            computed_ms: 9,
            ..d.clone()
        };
        assert_eq!(d.content_hash(), later.content_hash());
        let mut other = d.clone();
        other.rows[0].outcome = "declined".into();
        assert_ne!(d.content_hash(), other.content_hash());
    }

    #[test]
    fn tags_are_checked_and_applied_with_removal_winning() {
        assert!(check_tag("web-eu").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag(&"x".repeat(65)).is_err());
        assert!(check_tag("a,b").is_err());
        assert!(check_tag(" a").is_err());
        assert!(check_tag("a\nb").is_err());
        let have = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            apply_tags(&have, &["c".into(), "a".into()], &["b".into()]),
            vec!["a".to_string(), "c".to_string()]
        );
        assert_eq!(
            apply_tags(&have, &["b".into()], &["b".into()]),
            vec!["a".to_string()]
        );
    }

    #[test]
    fn deploy_frames_round_trip_through_the_codec() {
        let f = CentralFrame::DeployOrders(vec![DeployOrder {
            id: "ord-1".into(),
            actor: "ann@central".into(),
            kind: DeployOrderKind::Act {
                deployment: "cdep-1".into(),
                action: "pause".into(),
                body_json: "{\"note\":\"x\"}".into(),
            },
        }]);
        let b = outpost_proto::codec::encode(&f).unwrap();
        assert_eq!(outpost_proto::codec::decode::<CentralFrame>(&b).unwrap(), f);
        let s = SiteFrame::DeployProgress(DeployProgress {
            deployment: "cdep-1".into(),
            updated_at_ms: 5,
            from_central: true,
            view_json: "{}".into(),
        });
        let b = outpost_proto::codec::encode(&s).unwrap();
        assert_eq!(outpost_proto::codec::decode::<SiteFrame>(&b).unwrap(), s);
    }
}
