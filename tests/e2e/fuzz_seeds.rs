//! The seed corpus of the fuzz targets in `fuzz/` (README, "Fuzzing"):
//! real frames of every message kind, real uplink batches, and the alert
//! rule, channel, policy and maintenance window JSON of the README's
//! examples. This module writes them and checks that the committed ones
//! still are what it writes (decoded, so a zstd or layout change shows up
//! as a difference in values, not in bytes).
//!
//! Refresh after a format change:
//! `OUTPOST_WRITE_FUZZ_SEEDS=1 cargo test -p outpost-tests --test e2e -- fuzz_seeds::`
//! (writes `fuzz/corpus/<target>/<name>`; other files there, the apt seeds
//! and crash inputs kept as regressions, are left alone). Owns no other
//! file and starts no process.

use std::fmt::Debug;
use std::path::PathBuf;

use bytes::BytesMut;
use outpost_alerting::model::{
    Channel, ChannelKind, EscalationPolicy, MaintenanceWindow, Rule, SmtpTls,
};
use outpost_alerting::windows;
use outpost_appliance::alerts::builtin::builtin_rules;
use outpost_proto::frame::{split_frame, write_frame};
use outpost_proto::messages::*;
use outpost_proto::{CustomerId, DeviceId, SiteId, TenantId, codec};
use outpost_uplink::batch::{self, *};
use outpost_uplink::wire::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Frames up to the appliance's default limit (every seed is far smaller).
const MAX_FRAME: usize = outpost_proto::DEFAULT_MAX_FRAME_BYTES;

/// A fixed time (2026-11-24T12:00:00Z) so the seeds do not change per run.
const T0: u64 = 1_795_521_600_000;

/// Reads seed bytes back into a description of the values they hold.
type Reader = fn(&[u8]) -> Result<String, String>;

/// One seed file: its target, its name, its bytes, and how to read such
/// bytes back into a comparable description (the decoded values).
struct Seed {
    target: &'static str,
    name: String,
    bytes: Vec<u8>,
    read: Reader,
}

fn corpus() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"))
}

/// Reads a stream of frames, each a `T`.
fn read_frames<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<String, String> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(payload) = split_frame(&mut buf, MAX_FRAME).map_err(|e| e.to_string())? {
        out.push(codec::decode::<T>(&payload).map_err(|e| e.to_string())?);
    }
    if !buf.is_empty() {
        return Err(format!("{} bytes after the last frame", buf.len()));
    }
    if out.is_empty() {
        return Err("no frame".into());
    }
    Ok(format!("{out:?}"))
}

/// Reads one frame payload as a `T`.
fn read_message<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<String, String> {
    codec::decode::<T>(bytes)
        .map(|v| format!("{v:?}"))
        .map_err(|e| e.to_string())
}

/// Reads an uplink batch payload (zstd).
fn read_batch(bytes: &[u8]) -> Result<String, String> {
    batch::decode(bytes)
        .map(|b| format!("{b:?}"))
        .map_err(|e| e.to_string())
}

/// Reads a batch's decompressed layout (the batch targets also compress
/// their input, so these bytes reach the bincode and column decoders).
fn read_raw_batch(bytes: &[u8]) -> Result<String, String> {
    let payload = zstd::bulk::compress(bytes, 1).map_err(|e| e.to_string())?;
    read_batch(&payload)
}

/// Reads JSON of the API type a README example posts (and validates it).
fn read_json<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<T>(bytes)
        .map(|v| format!("{v:?}"))
        .map_err(|e| e.to_string())
}

fn frames<T: Serialize + DeserializeOwned + Debug>(
    seeds: &mut Vec<Seed>,
    name: &str,
    messages: &[T],
) {
    let mut stream = BytesMut::new();
    for (i, m) in messages.iter().enumerate() {
        write_frame(m, &mut stream, MAX_FRAME).expect("a seed message fits a frame");
        let payload = codec::encode(m).expect("a seed message encodes");
        seeds.push(Seed {
            target: "message_decode",
            name: format!("{name}-{i}"),
            bytes: payload,
            read: read_message::<T>,
        });
    }
    for target in ["frame_decode", "message_roundtrip"] {
        seeds.push(Seed {
            target,
            name: name.to_string(),
            bytes: stream.to_vec(),
            read: read_frames::<T>,
        });
    }
}

/// A stand-in for DER bytes (a certificate or CSR): fixed, so the seeds do
/// not change per run; the codec carries them as opaque bytes.
fn der(tag: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
    v.extend((0..len).map(|i| tag.wrapping_add(i as u8)));
    v
}

fn metric(name: &str, label: &str, value: f64) -> MetricValue {
    MetricValue {
        name: name.into(),
        label: label.into(),
        value,
    }
}

fn agent_session() -> Vec<AgentFrame> {
    let inventory = Inventory {
        hostname: "web-1".into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "12".into(),
        kernel: "6.1.0-18-amd64".into(),
        arch: "x86_64".into(),
        cpu_model: "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz".into(),
        cpu_cores: 4,
        memory_total_bytes: 8 << 30,
        disks: vec![
            DiskInventory {
                mount: "/".into(),
                filesystem: "ext4".into(),
                total_bytes: 64 << 30,
            },
            DiskInventory {
                mount: "/var".into(),
                filesystem: "xfs".into(),
                total_bytes: 200 << 30,
            },
        ],
        nics: vec![NicInventory {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            ips: vec!["10.0.0.5".into(), "fe80::5054:ff:fe12:3456".into()],
        }],
        agent_version: "0.1.0".into(),
    };
    let metrics = |seq: u64, cpu: f64| Record {
        seq,
        ts_ms: T0 + seq * 60_000,
        body: RecordBody::Metrics(MetricsSample {
            values: vec![
                metric("cpu", "", cpu),
                metric("load1", "", 0.42),
                metric("memory_used_percent", "", 61.25),
                metric("disk_used_percent", "/", 47.5),
                metric("disk_used_percent", "/var", 91.03),
                metric("net_rx_bytes", "eth0", 123_456_789.0),
                metric("process_count", "nginx", 0.0),
            ],
        }),
    };
    vec![
        AgentFrame::Hello(Hello {
            protocol_version: outpost_proto::PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            heartbeat_interval_ms: 30_000,
            metrics_interval_ms: 60_000,
        }),
        AgentFrame::Records(vec![
            Record {
                seq: 1,
                ts_ms: T0,
                body: RecordBody::Inventory(Box::new(inventory)),
            },
            Record {
                seq: 2,
                ts_ms: T0,
                body: RecordBody::Heartbeat(Heartbeat {
                    uptime_s: 86_400,
                    buffered_records: 0,
                    dropped_records: 0,
                }),
            },
            metrics(3, 12.5),
            metrics(4, 97.75),
        ]),
        AgentFrame::Goodbye {
            reason: "shutdown".into(),
        },
    ]
}

fn appliance_session() -> Vec<ApplianceFrame> {
    vec![
        ApplianceFrame::Welcome(Welcome {
            protocol_version: outpost_proto::PROTOCOL_VERSION,
            device_id: DeviceId(0xe8ec_9480_c5af_0e3b),
            last_stored_seq: 2,
            max_frame_bytes: MAX_FRAME as u32,
        }),
        ApplianceFrame::Ack(Ack { up_to_seq: 4 }),
        ApplianceFrame::Close(Close {
            reason: CloseReason::ShuttingDown,
            message: "appliance restarting".into(),
        }),
    ]
}

fn enrollment() -> (Vec<EnrollRequest>, Vec<EnrollResponse>) {
    let request = EnrollRequest {
        protocol_version: outpost_proto::PROTOCOL_VERSION,
        token: "opt_3f6b0c9e2a1d4c8b9e7f".into(),
        csr_der: der(1, 300),
        facts: DeviceFacts {
            hostname: "web-1".into(),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0-18-amd64".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
        },
    };
    let responses = vec![
        EnrollResponse::Accepted {
            device_id: DeviceId(0xe8ec_9480_c5af_0e3b),
            tenant: TenantId::new("acme-msp"),
            customer: CustomerId::new("dental"),
            cert_der: der(2, 400),
            ca_cert_der: der(3, 400),
        },
        EnrollResponse::Rejected {
            reason: EnrollRejectReason::ExpiredToken,
            message: "token expired 2026-11-20T10:00:00Z".into(),
        },
    ];
    (vec![request], responses)
}

/// A batch like one a site sends: two devices, their rollups of two
/// buckets, alert transitions; `cleared` and a foreign tenant make it
/// format 3, without them it is format 2.
fn site_batch(format3: bool) -> SiteBatch {
    let device = |id: u64, host: &str, status: DeviceStatus| DeviceUpdate {
        device: DeviceId(id),
        customer: CustomerId::new("dental"),
        hostname: host.into(),
        os: "Debian GNU/Linux 12".into(),
        agent_version: "0.1.0".into(),
        enrolled_at_ms: T0 - 86_400_000,
        revoked: false,
        status,
        status_since_ms: T0 - 3_600_000,
        last_seen_ms: T0 - 1_000,
        as_of_ms: T0,
    };
    let rollup = |min: f64, max: f64, count: u64, bucket: u64| Rollup {
        min,
        max,
        sum: (min + max) / 2.0 * count as f64,
        count,
        last: max,
        last_ts_ms: bucket + 290_000,
    };
    let entry = |id: u64, bucket: u64, cpu: f64| DeviceRollups {
        device: DeviceId(id),
        bucket_start_ms: bucket,
        computed_ms: bucket + 420_000,
        series: vec![
            SeriesRollup {
                name: "cpu".into(),
                label: String::new(),
                rollup: rollup(cpu, cpu + 30.0, 5, bucket),
            },
            SeriesRollup {
                name: "disk_used_percent".into(),
                label: "/".into(),
                rollup: rollup(47.5, 47.5, 5, bucket),
            },
            SeriesRollup {
                name: "net_rx_bytes".into(),
                label: "eth0".into(),
                rollup: rollup(1.0e6, 1.23456789e8, 5, bucket),
            },
            SeriesRollup {
                name: "load1".into(),
                label: String::new(),
                rollup: rollup(0.01, 3.9, 5, bucket),
            },
        ],
    };
    let bucket = T0 - T0 % 300_000 - 600_000;
    let transition = |id: u64, state: AlertState, at: u64| AlertTransition {
        alert_id: id,
        device: Some(DeviceId(1)),
        rule: "builtin-cpu-high".into(),
        severity: Severity::Warning,
        state,
        at_ms: at,
        message: "cpu > 95 for 15m".into(),
        value: Some(97.75),
    };
    let mut alerts = vec![
        transition(12, AlertState::Pending, T0 - 900_000),
        transition(12, AlertState::Firing, T0),
        AlertTransition {
            device: None,
            rule: "builtin-device-offline".into(),
            value: None,
            ..transition(13, AlertState::Resolved, T0)
        },
    ];
    let mut foreign_tenants = Vec::new();
    if format3 {
        alerts.push(transition(14, AlertState::Cleared, T0));
        foreign_tenants.push(ForeignTenant {
            tenant: TenantId::new("typo-msp"),
            devices: 1,
        });
    }
    SiteBatch {
        seq: 42,
        site: SiteId::new("s-7f3a9c"),
        tenant: TenantId::new("acme-msp"),
        created_ms: T0,
        devices: vec![
            device(1, "web-1", DeviceStatus::Online),
            device(2, "db-1", DeviceStatus::Offline),
        ],
        rollups: vec![
            entry(1, bucket, 12.5),
            entry(2, bucket, 3.0),
            entry(1, bucket + 300_000, 60.25),
        ],
        alerts,
        patch_compliance: vec![PatchCompliance {
            device: DeviceId(1),
            missing: 3,
            missing_critical: 1,
            installed_pending_reboot: 0,
            as_of_ms: T0,
            detail: None,
        }],
        commands: vec![CommandSummary {
            device: DeviceId(2),
            completed: 5,
            failed: 1,
            timed_out: 0,
            as_of_ms: T0,
        }],
        dropped_rollups: 0,
        foreign_tenants,
        patch_findings: vec![],
        device_facts: vec![],
    }
}

fn uplink(seeds: &mut Vec<Seed>) {
    let batches = [
        ("format2", site_batch(false)),
        ("format3", site_batch(true)),
        ("format6", {
            // Devices' IPs and tags (uplink protocol 6).
            let mut b = site_batch(true);
            b.device_facts = vec![DeviceIpsTags {
                device: DeviceId(1),
                ips: vec!["192.168.10.21".into(), "fd00::21".into()],
                tags: vec!["web".into(), "eu-west".into()],
            }];
            b
        }),
        ("empty", SiteBatch::default()),
    ];
    for (name, b) in &batches {
        let payload = batch::encode(b, DEFAULT_ZSTD_LEVEL).expect("a seed batch encodes");
        let raw = zstd::stream::decode_all(&payload[..]).expect("our own zstd");
        for target in ["batch_decode", "batch_roundtrip"] {
            seeds.push(Seed {
                target,
                name: format!("batch-{name}"),
                bytes: payload.clone(),
                read: read_batch,
            });
            seeds.push(Seed {
                target,
                name: format!("raw-{name}"),
                bytes: raw.clone(),
                read: read_raw_batch,
            });
        }
    }
    let payload = batch::encode(&batches[0].1, DEFAULT_ZSTD_LEVEL).expect("encodes");
    frames(
        seeds,
        "site-session",
        &[
            SiteFrame::Hello(SiteHello {
                protocol_version: UPLINK_PROTOCOL_VERSION,
                appliance_version: "0.1.0".into(),
                interval_ms: 10_000,
                backlog_batches: 1,
            }),
            SiteFrame::Batch(WireBatch { seq: 42, payload }),
            SiteFrame::CommandAck(outpost_uplink::downlink::CommandAck::accepted(
                outpost_proto::ids::CommandId([7; 16]),
            )),
            SiteFrame::CommandUpdate(outpost_uplink::downlink::CommandUpdate {
                id: outpost_proto::ids::CommandId([7; 16]),
                state: outpost_uplink::downlink::SiteCommandState::Completed,
                transitions: vec![
                    (outpost_uplink::downlink::SiteCommandState::Queued, 1),
                    (outpost_uplink::downlink::SiteCommandState::Running, 2),
                    (outpost_uplink::downlink::SiteCommandState::Completed, 3),
                ],
                exit_code: Some(0),
                signal: None,
                reason: None,
                output_total: Some(6),
                output_truncated: false,
                output: outpost_uplink::downlink::OutputChunk {
                    replace: false,
                    offset: 0,
                    bytes: b"hello\n".to_vec(),
                },
                last: true,
            }),
            SiteFrame::DeployAck(outpost_uplink::deploy_link::DeployAck {
                id: "ord-00000000000000a1".into(),
                refused: None,
            }),
            SiteFrame::DeployProgress(outpost_uplink::deploy_link::DeployProgress {
                deployment: "cdep-1a2b3c4d".into(),
                updated_at_ms: 1_700_000_000_000,
                from_central: true,
                view_json: r#"{"summary":{"phase":"running","stage":0},"stages":[],"devices":[]}"#
                    .into(),
            }),
        ],
    );
    frames(
        seeds,
        "central-session",
        &[
            CentralFrame::Welcome(CentralWelcome {
                protocol_version: UPLINK_PROTOCOL_VERSION,
                site_id: SiteId::new("s-7f3a9c"),
                applied_up_to: 40,
                applied_above: vec![43, 45],
            }),
            CentralFrame::Ack { seq: 41 },
            CentralFrame::Reject {
                seq: 42,
                reason: RejectReason::Malformed,
                message: "batch over limit series_names: 70000 > 65536".into(),
            },
            CentralFrame::Commands(vec![outpost_uplink::downlink::DownCommand {
                id: outpost_proto::ids::CommandId([7; 16]),
                device: outpost_proto::DeviceId(42),
                spec: outpost_proto::command::CommandSpec::shell("uptime", "ann@central")
                    .encode()
                    .expect("encodes"),
                cancel: None,
                output_len: 0,
                transitions: 0,
            }]),
            CentralFrame::Cancel {
                id: outpost_proto::ids::CommandId([7; 16]),
                by: "ann@central".into(),
            },
            CentralFrame::CommandUpdateAck(outpost_uplink::downlink::UpdateAck {
                id: outpost_proto::ids::CommandId([7; 16]),
                output_len: 6,
                transitions: 3,
                closed: true,
            }),
            CentralFrame::DeployOrders(vec![outpost_uplink::deploy_link::DeployOrder {
                id: "ord-00000000000000a1".into(),
                actor: "ann@central".into(),
                kind: outpost_uplink::deploy_link::DeployOrderKind::CreateDeployment {
                    request_json: r#"{"id":"cdep-1a2b3c4d","target":{"type":"all"}}"#.into(),
                },
            }]),
            CentralFrame::DeployProgressAck(outpost_uplink::deploy_link::DeployProgressAck {
                deployment: "cdep-1a2b3c4d".into(),
                updated_at_ms: 1_700_000_000_000,
            }),
        ],
    );
    frames(
        seeds,
        "join-request",
        &[JoinRequest {
            protocol_version: UPLINK_PROTOCOL_VERSION,
            token: "ost_9d2c4e6f8a0b1c3d5e7f".into(),
            csr_der: der(4, 300),
            appliance_version: "0.1.0".into(),
            hostname: "rack-1".into(),
        }],
    );
    frames(
        seeds,
        "join-responses",
        &[
            JoinResponse::Accepted {
                site_id: SiteId::new("s-7f3a9c"),
                site_name: "main office".into(),
                tenant: TenantId::new("acme-msp"),
                customer: CustomerId::new("dental"),
                cert_der: der(5, 400),
                ca_cert_der: der(6, 400),
            },
            JoinResponse::Rejected {
                message: "unknown site token".into(),
            },
        ],
    );
}

/// The JSON bodies the README's alerting examples post
/// (`outpost api POST /api/v1/<kind> --body '<json>'`), by kind.
fn readme_bodies() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let mut out = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("outpost api POST /api/v1/") {
        rest = &rest[at + "outpost api POST /api/v1/".len()..];
        let Some((kind, after)) = rest.split_once(" --body '") else {
            continue;
        };
        let Some((body, _)) = after.split_once('\'') else {
            continue;
        };
        if !kind.contains(char::is_whitespace) {
            out.push((kind.to_string(), body.to_string()));
        }
    }
    out
}

fn alerting(seeds: &mut Vec<Seed>) {
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for (kind, body) in readme_bodies() {
        let (target, read): (_, Reader) = match kind.as_str() {
            "alert-rules" => ("alert_rule_json", read_json::<Rule>),
            "channels" => ("alert_rule_json", read_json::<Channel>),
            "escalation-policies" => ("alert_rule_json", read_json::<EscalationPolicy>),
            "maintenance-windows" => ("maintenance_window", read_json::<MaintenanceWindow>),
            _ => continue,
        };
        let n = counts.entry(kind.clone()).or_default();
        *n += 1;
        seeds.push(Seed {
            target,
            name: format!("readme-{kind}-{n}"),
            bytes: body.into_bytes(),
            read,
        });
    }
    for rule in builtin_rules() {
        seeds.push(Seed {
            target: "alert_rule_json",
            name: rule.id.clone(),
            bytes: serde_json::to_vec_pretty(&rule).expect("serializes"),
            read: read_json::<Rule>,
        });
    }
    let email = Channel {
        id: "mail".into(),
        name: "on-call mail".into(),
        kind: ChannelKind::Email {
            smtp_host: "smtp.example.com".into(),
            smtp_port: 465,
            tls: SmtpTls::Tls,
            username: Some("outpost".into()),
            password: Some("s3cret".into()),
            from: "outpost@example.com".into(),
            to: vec!["oncall@example.com".into()],
        },
    };
    seeds.push(Seed {
        target: "alert_rule_json",
        name: "channel-email".into(),
        bytes: serde_json::to_vec(&email).expect("serializes"),
        read: read_json::<Channel>,
    });
}

fn all_seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    frames(&mut seeds, "agent-session", &agent_session());
    frames(&mut seeds, "appliance-session", &appliance_session());
    let (requests, responses) = enrollment();
    frames(&mut seeds, "enroll-request", &requests);
    frames(&mut seeds, "enroll-responses", &responses);
    uplink(&mut seeds);
    alerting(&mut seeds);
    seeds
}

#[test]
fn the_readme_alerting_examples_parse_and_validate() {
    let bodies = readme_bodies();
    let kinds: Vec<&str> = bodies.iter().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "channels",
        "alert-rules",
        "escalation-policies",
        "maintenance-windows",
    ] {
        assert!(
            kinds.contains(&kind),
            "no README example of {kind}: {kinds:?}"
        );
    }
    for (kind, body) in &bodies {
        let checked = match kind.as_str() {
            "alert-rules" => serde_json::from_str::<Rule>(body)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate()),
            "channels" => serde_json::from_str::<Channel>(body)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate()),
            "escalation-policies" => serde_json::from_str::<EscalationPolicy>(body)
                .map(drop)
                .map_err(|e| e.to_string()),
            "maintenance-windows" => serde_json::from_str::<MaintenanceWindow>(body)
                .map_err(|e| e.to_string())
                .and_then(|w| windows::validate(&w)),
            _ => Ok(()),
        };
        checked.unwrap_or_else(|e| panic!("README example {kind} {body}: {e}"));
    }
}

#[test]
fn the_committed_fuzz_seeds_are_the_real_frames_batches_and_examples() {
    let seeds = all_seeds();
    let write = std::env::var_os("OUTPOST_WRITE_FUZZ_SEEDS").is_some();
    let mut stale = Vec::new();
    let mut total = 0;
    for seed in &seeds {
        let want = (seed.read)(&seed.bytes)
            .unwrap_or_else(|e| panic!("seed {}/{} does not read: {e}", seed.target, seed.name));
        let path = corpus().join(seed.target).join(&seed.name);
        if write {
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, &seed.bytes).expect("writing a seed");
        }
        total += seed.bytes.len();
        match std::fs::read(&path) {
            Ok(got) => match (seed.read)(&got) {
                Ok(got) if got == want => {}
                Ok(_) => stale.push(format!("{}: other values", path.display())),
                Err(e) => stale.push(format!("{}: {e}", path.display())),
            },
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds out of date (refresh: OUTPOST_WRITE_FUZZ_SEEDS=1 cargo test -p \
         outpost-tests --test e2e -- fuzz_seeds::):\n{}",
        stale.join("\n")
    );
    // Every target of this module has seeds, and the corpus stays small.
    for target in [
        "frame_decode",
        "message_decode",
        "message_roundtrip",
        "batch_decode",
        "batch_roundtrip",
        "alert_rule_json",
        "maintenance_window",
    ] {
        assert!(seeds.iter().any(|s| s.target == target), "{target}");
    }
    assert!(total < 256 * 1024, "{total} bytes of seeds");
    // A batch seed is a real one: within the limits, rollups included.
    let b = site_batch(true);
    assert!(b.check_limits().is_ok() && b.rollup_count() == 12);
    assert_eq!((format_of(&site_batch(false)), format_of(&b)), (2, 3));
}
