//! Helpers shared by Outpost's fuzz targets (`fuzz_targets/*.rs`):
//!
//! * [`check`]: decode-then-re-encode properties for the one bincode codec;
//! * [`generate`]: valid messages and batches built from the fuzzer's bytes
//!   (a seeded generator over [`arbitrary::Unstructured`]), for the
//!   structure-aware targets;
//! * [`mutate`]: byte-level mutations of valid encodings (bit flips,
//!   truncation, length-field changes, splices), driven by the same bytes.
//!
//! Nothing here may link RocksDB: only the RocksDB-free crates
//! (`outpost-proto`, `outpost-uplink` without its `appliance` feature,
//! `outpost-alerting`).

pub mod check {
    use outpost_proto::codec;
    use outpost_uplink::batch::{self, SiteBatch};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// Decodes `bytes` as one `T` through the codec. Whatever decodes must
    /// re-encode to a canonical form that decodes and re-encodes to itself
    /// (bincode accepts some non-canonical varints, so the first
    /// re-encoding may differ from the input; NaN rules out comparing the
    /// values). Returns whether it decoded.
    pub fn codec_round_trip<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> bool {
        let Ok(value) = codec::decode::<T>(bytes) else {
            return false;
        };
        let canonical = codec::encode(&value).expect("a decoded value encodes");
        let again: T = codec::decode(&canonical).expect("a canonical encoding decodes");
        assert_eq!(
            codec::encode(&again).expect("encodes"),
            canonical,
            "re-encoding is not stable"
        );
        true
    }

    /// Parses `text` as JSON of `T`. What parses must serialize, and that
    /// JSON must parse back to an equal value that serializes identically:
    /// a value the admin API accepted and stored loads again unchanged.
    pub fn json_round_trip<T>(text: &str) -> Option<T>
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let value: T = serde_json::from_str(text).ok()?;
        let json = serde_json::to_string(&value).expect("a parsed value serializes");
        let back: T = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("its own JSON does not parse: {e}\n{json}"));
        assert_eq!(back, value, "the JSON round trip changed the value: {json}");
        assert_eq!(
            serde_json::to_string(&back).expect("serializes"),
            json,
            "serializing again changed the JSON"
        );
        Some(value)
    }

    /// Every message type either end of any Outpost connection decodes:
    /// agent session and enrollment, uplink stream and join.
    pub fn every_message(payload: &[u8]) -> usize {
        use outpost_proto::messages::*;
        use outpost_uplink::wire::*;
        [
            codec_round_trip::<AgentFrame>(payload),
            codec_round_trip::<ApplianceFrame>(payload),
            codec_round_trip::<EnrollRequest>(payload),
            codec_round_trip::<EnrollResponse>(payload),
            codec_round_trip::<SiteFrame>(payload),
            codec_round_trip::<CentralFrame>(payload),
            codec_round_trip::<JoinRequest>(payload),
            codec_round_trip::<JoinResponse>(payload),
        ]
        .iter()
        .filter(|ok| **ok)
        .count()
    }

    /// Bit-exact equality of two batches: `PartialEq` on `f64` calls NaN
    /// unequal to itself and -0.0 equal to 0.0, but the batch codec
    /// promises every bit pattern back.
    pub fn batches_identical(a: &SiteBatch, b: &SiteBatch) -> bool {
        let mut a = a.clone();
        let mut b = b.clone();
        let ra = std::mem::take(&mut a.rollups);
        let rb = std::mem::take(&mut b.rollups);
        let va: Vec<_> = a.alerts.iter_mut().map(|t| t.value.take()).collect();
        let vb: Vec<_> = b.alerts.iter_mut().map(|t| t.value.take()).collect();
        let bits = |v: &Option<f64>| v.map(f64::to_bits);
        a == b
            && va.iter().map(bits).eq(vb.iter().map(bits))
            && ra.len() == rb.len()
            && ra.iter().zip(&rb).all(|(x, y)| {
                x.device == y.device
                    && x.bucket_start_ms == y.bucket_start_ms
                    && x.computed_ms == y.computed_ms
                    && x.series.len() == y.series.len()
                    && x.series.iter().zip(&y.series).all(|(s, t)| {
                        let (r, q) = (&s.rollup, &t.rollup);
                        s.name == t.name
                            && s.label == t.label
                            && r.min.to_bits() == q.min.to_bits()
                            && r.max.to_bits() == q.max.to_bits()
                            && r.sum.to_bits() == q.sum.to_bits()
                            && r.last.to_bits() == q.last.to_bits()
                            && r.count == q.count
                            && r.last_ts_ms == q.last_ts_ms
                    })
            })
    }

    /// Decodes an uplink batch payload (zstd, bincode, columnar rollups).
    /// A batch that decodes opened with its own header, is within the
    /// limits ([`SiteBatch::check_limits`]), encodes again, and that
    /// encoding decodes to the identical batch. Returns whether it decoded.
    pub fn batch_round_trip(payload: &[u8]) -> bool {
        let opened = batch::open(payload);
        let Ok(b) = batch::decode(payload) else {
            return false;
        };
        // What decodes opened, and its header is the batch's.
        let opened = opened.expect("a batch that decodes opens");
        let h = opened.header();
        assert_eq!(
            (h.seq, &h.site, &h.tenant),
            (b.seq, &b.site, &b.tenant),
            "the header disagrees with the batch"
        );
        b.check_limits()
            .expect("a decoded batch is within the limits the decoder applies");
        let bytes = batch::encode(&b, 1).expect("a decoded batch encodes");
        let back = batch::decode(&bytes).expect("an encoded batch decodes");
        assert!(
            batches_identical(&b, &back),
            "batch changed in a round trip:\n{b:?}\n{back:?}"
        );
        true
    }
}

pub mod generate {
    //! Valid values from fuzzer bytes. Strings and numbers lean towards
    //! the realistic (metric names, decimal values, recent timestamps)
    //! with the edges mixed in (empty, non-ASCII, NaN, u64::MAX).

    use arbitrary::{Result, Unstructured};
    use outpost_proto::messages::*;
    use outpost_proto::{CustomerId, DeviceId, SiteId, TenantId};
    use outpost_uplink::batch::*;
    use outpost_uplink::wire::*;

    const NAMES: &[&str] = &[
        "cpu",
        "memory_used_percent",
        "swap_used_percent",
        "disk_used_percent",
        "net_rx_bytes",
        "load1",
        "processes",
        "",
        "ünïcødé",
    ];
    const LABELS: &[&str] = &["", "/", "/var", "eth0", "sshd", "C:\\"];

    /// A string: mostly from `pool`, sometimes anything.
    pub fn string(u: &mut Unstructured, pool: &[&str]) -> Result<String> {
        Ok(if u.ratio(3, 4)? {
            u.choose(pool)?.to_string()
        } else {
            u.arbitrary::<String>()?
        })
    }

    /// A site or tenant id as a batch carries it: from `pool` or anything,
    /// at most 64 characters (central and the appliance validate ids where
    /// they are chosen; the batch header is read from its first KiB).
    pub fn id(u: &mut Unstructured, pool: &[&str]) -> Result<String> {
        Ok(string(u, pool)?.chars().take(64).collect())
    }

    /// A number: small, a recent time in ms, or anything.
    pub fn u64_(u: &mut Unstructured) -> Result<u64> {
        Ok(match u.int_in_range(0..=3)? {
            0 => u.int_in_range(0..=1000)?,
            1 => 1_700_000_000_000 + u.int_in_range(0..=100_000_000_000)?,
            2 => *u.choose(&[0, 1, u64::MAX, u64::MAX - 1, i64::MAX as u64, 1 << 53])?,
            _ => u.arbitrary()?,
        })
    }

    /// A value: two decimals (what agents report), a special value, or any bits.
    pub fn f64_(u: &mut Unstructured) -> Result<f64> {
        Ok(match u.int_in_range(0..=3)? {
            0 | 1 => f64::from(u.int_in_range(-1_000_000i32..=10_000_000)?) / 100.0,
            2 => *u.choose(&[
                0.0,
                -0.0,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MAX,
                f64::MIN_POSITIVE,
                5e-324,
                9.0e15,
                1e300,
            ])?,
            _ => f64::from_bits(u.arbitrary()?),
        })
    }

    fn device(u: &mut Unstructured) -> Result<DeviceId> {
        Ok(DeviceId(if u.ratio(1, 2)? {
            u.int_in_range(1..=8)?
        } else {
            u.arbitrary()?
        }))
    }

    fn bytes(u: &mut Unstructured, max: usize) -> Result<Vec<u8>> {
        let n = u.int_in_range(0..=max)?;
        Ok(u.bytes(n.min(u.len()))?.to_vec())
    }

    fn vec<T>(
        u: &mut Unstructured,
        max: usize,
        mut f: impl FnMut(&mut Unstructured) -> Result<T>,
    ) -> Result<Vec<T>> {
        let n = u.int_in_range(0..=max)?;
        (0..n).map(|_| f(u)).collect()
    }

    pub fn record(u: &mut Unstructured) -> Result<Record> {
        let body = match u.int_in_range(0..=2)? {
            0 => RecordBody::Heartbeat(Heartbeat {
                uptime_s: u64_(u)?,
                buffered_records: u.arbitrary()?,
                dropped_records: u64_(u)?,
            }),
            1 => RecordBody::Metrics(MetricsSample {
                values: vec(u, 12, |u| {
                    Ok(MetricValue {
                        name: string(u, NAMES)?,
                        label: string(u, LABELS)?,
                        value: f64_(u)?,
                    })
                })?,
            }),
            _ => RecordBody::Inventory(Box::new(Inventory {
                hostname: string(u, &["web-1", "db-1", ""])?,
                os_name: string(u, &["Debian GNU/Linux", "Rocky Linux"])?,
                os_version: string(u, &["12", "9.3"])?,
                kernel: string(u, &["6.1.0-18-amd64"])?,
                arch: string(u, &["x86_64", "aarch64"])?,
                cpu_model: u.arbitrary()?,
                cpu_cores: u.arbitrary()?,
                memory_total_bytes: u64_(u)?,
                disks: vec(u, 4, |u| {
                    Ok(DiskInventory {
                        mount: string(u, LABELS)?,
                        filesystem: string(u, &["ext4", "xfs", "tmpfs"])?,
                        total_bytes: u64_(u)?,
                    })
                })?,
                nics: vec(u, 3, |u| {
                    Ok(NicInventory {
                        name: string(u, &["eth0", "lo", "wlan0"])?,
                        mac: string(u, &["00:11:22:33:44:55"])?,
                        ips: vec(u, 3, |u| string(u, &["10.0.0.5", "fe80::1"]))?,
                    })
                })?,
                agent_version: string(u, &["0.1.0"])?,
            })),
        };
        Ok(Record {
            seq: u64_(u)?,
            ts_ms: u64_(u)?,
            body,
        })
    }

    pub fn agent_frame(u: &mut Unstructured) -> Result<AgentFrame> {
        Ok(match u.int_in_range(0..=2)? {
            0 => AgentFrame::Hello(Hello {
                protocol_version: u.arbitrary()?,
                agent_version: string(u, &["0.1.0"])?,
                heartbeat_interval_ms: u.arbitrary()?,
                metrics_interval_ms: u.arbitrary()?,
            }),
            1 => AgentFrame::Records(vec(u, 8, record)?),
            _ => AgentFrame::Goodbye {
                reason: string(u, &["shutdown", ""])?,
            },
        })
    }

    pub fn close_reason(u: &mut Unstructured) -> Result<CloseReason> {
        let code = u.int_in_range(0..=10u64)?;
        Ok(CloseReason::from_code(code).unwrap_or(CloseReason::Internal))
    }

    pub fn appliance_frame(u: &mut Unstructured) -> Result<ApplianceFrame> {
        Ok(match u.int_in_range(0..=2)? {
            0 => ApplianceFrame::Welcome(Welcome {
                protocol_version: u.arbitrary()?,
                device_id: device(u)?,
                last_stored_seq: u64_(u)?,
                max_frame_bytes: u.arbitrary()?,
            }),
            1 => ApplianceFrame::Ack(Ack {
                up_to_seq: u64_(u)?,
            }),
            _ => ApplianceFrame::Close(Close {
                reason: close_reason(u)?,
                message: u.arbitrary()?,
            }),
        })
    }

    pub fn enroll_request(u: &mut Unstructured) -> Result<EnrollRequest> {
        Ok(EnrollRequest {
            protocol_version: u.arbitrary()?,
            token: string(u, &["opt_0123456789abcdef", ""])?,
            csr_der: bytes(u, 64)?,
            facts: DeviceFacts {
                hostname: string(u, &["web-1"])?,
                os: string(u, &["Debian GNU/Linux 12"])?,
                kernel: string(u, &["6.1.0"])?,
                arch: string(u, &["x86_64"])?,
                agent_version: string(u, &["0.1.0"])?,
            },
        })
    }

    pub fn enroll_response(u: &mut Unstructured) -> Result<EnrollResponse> {
        const REASONS: [EnrollRejectReason; 6] = [
            EnrollRejectReason::UnknownToken,
            EnrollRejectReason::ExpiredToken,
            EnrollRejectReason::TokenUsedUp,
            EnrollRejectReason::BadCsr,
            EnrollRejectReason::UnsupportedVersion,
            EnrollRejectReason::Internal,
        ];
        Ok(if u.arbitrary()? {
            EnrollResponse::Accepted {
                device_id: device(u)?,
                tenant: TenantId::new(string(u, &["acme-msp"])?),
                customer: CustomerId::new(string(u, &["dental"])?),
                cert_der: bytes(u, 64)?,
                ca_cert_der: bytes(u, 64)?,
            }
        } else {
            EnrollResponse::Rejected {
                reason: *u.choose(&REASONS)?,
                message: u.arbitrary()?,
            }
        })
    }

    pub fn site_frame(u: &mut Unstructured) -> Result<SiteFrame> {
        Ok(if u.arbitrary()? {
            SiteFrame::Hello(SiteHello {
                protocol_version: u.arbitrary()?,
                appliance_version: string(u, &["0.1.0"])?,
                interval_ms: u64_(u)?,
                backlog_batches: u64_(u)?,
            })
        } else {
            SiteFrame::Batch(WireBatch {
                seq: u64_(u)?,
                payload: if u.arbitrary()? {
                    encode(&site_batch(u)?, 1).expect("a generated batch encodes")
                } else {
                    bytes(u, 64)?
                },
            })
        })
    }

    pub fn central_frame(u: &mut Unstructured) -> Result<CentralFrame> {
        const REASONS: [RejectReason; 4] = [
            RejectReason::IdentityMismatch,
            RejectReason::Malformed,
            RejectReason::SequenceMismatch,
            RejectReason::Internal,
        ];
        Ok(match u.int_in_range(0..=2)? {
            0 => CentralFrame::Welcome(CentralWelcome {
                protocol_version: u.arbitrary()?,
                site_id: SiteId::new(string(u, &["s-1"])?),
                applied_up_to: u64_(u)?,
                applied_above: vec(u, 8, u64_)?,
            }),
            1 => CentralFrame::Ack { seq: u64_(u)? },
            _ => CentralFrame::Reject {
                seq: u64_(u)?,
                reason: *u.choose(&REASONS)?,
                message: u.arbitrary()?,
            },
        })
    }

    pub fn join_request(u: &mut Unstructured) -> Result<JoinRequest> {
        Ok(JoinRequest {
            protocol_version: u.arbitrary()?,
            token: string(u, &["ost_0123456789abcdef"])?,
            csr_der: bytes(u, 64)?,
            appliance_version: string(u, &["0.1.0"])?,
            hostname: string(u, &["rack-1"])?,
        })
    }

    pub fn join_response(u: &mut Unstructured) -> Result<JoinResponse> {
        Ok(if u.arbitrary()? {
            JoinResponse::Accepted {
                site_id: SiteId::new(string(u, &["s-1"])?),
                site_name: string(u, &["main office"])?,
                tenant: TenantId::new(string(u, &["acme-msp"])?),
                customer: CustomerId::new(string(u, &["dental"])?),
                cert_der: bytes(u, 64)?,
                ca_cert_der: bytes(u, 64)?,
            }
        } else {
            JoinResponse::Rejected {
                message: u.arbitrary()?,
            }
        })
    }

    fn rollup(u: &mut Unstructured, count: u64, last_ts_ms: u64) -> Result<Rollup> {
        if u.ratio(1, 3)? {
            // A constant series: min = max = last, sum = count * min.
            let v = f64_(u)?;
            return Ok(Rollup {
                min: v,
                max: v,
                sum: v * count as f64,
                count,
                last: v,
                last_ts_ms,
            });
        }
        Ok(Rollup {
            min: f64_(u)?,
            max: f64_(u)?,
            sum: f64_(u)?,
            count: if u.ratio(1, 8)? { u64_(u)? } else { count },
            last: f64_(u)?,
            last_ts_ms: if u.ratio(1, 8)? { u64_(u)? } else { last_ts_ms },
        })
    }

    pub fn device_rollups(u: &mut Unstructured) -> Result<DeviceRollups> {
        let bucket_start_ms = if u.ratio(3, 4)? {
            let t = 1_700_000_000_000 + u.int_in_range(0..=10_000_000_000u64)?;
            t - t % 300_000
        } else {
            u64_(u)?
        };
        let count = u.int_in_range(1..=60)?;
        let last_ts_ms = bucket_start_ms.wrapping_add(u.int_in_range(0..=300_000)?);
        Ok(DeviceRollups {
            device: device(u)?,
            bucket_start_ms,
            computed_ms: if u.ratio(3, 4)? {
                bucket_start_ms.wrapping_add(420_000)
            } else {
                u64_(u)?
            },
            series: vec(u, 10, |u| {
                Ok(SeriesRollup {
                    name: string(u, NAMES)?,
                    label: string(u, LABELS)?,
                    rollup: rollup(u, count, last_ts_ms)?,
                })
            })?,
        })
    }

    pub fn site_batch(u: &mut Unstructured) -> Result<SiteBatch> {
        const STATUS: [DeviceStatus; 3] = [
            DeviceStatus::Pending,
            DeviceStatus::Online,
            DeviceStatus::Offline,
        ];
        const STATES: [AlertState; 4] = [
            AlertState::Pending,
            AlertState::Firing,
            AlertState::Resolved,
            AlertState::Cleared,
        ];
        const SEVERITY: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];
        Ok(SiteBatch {
            seq: u64_(u)?,
            site: SiteId::new(id(u, &["s-1"])?),
            tenant: TenantId::new(id(u, &["acme-msp"])?),
            created_ms: u64_(u)?,
            devices: vec(u, 6, |u| {
                Ok(DeviceUpdate {
                    device: device(u)?,
                    customer: CustomerId::new(string(u, &["dental", ""])?),
                    hostname: string(u, &["web-1", "db-1"])?,
                    os: string(u, &["Debian GNU/Linux 12"])?,
                    agent_version: string(u, &["0.1.0"])?,
                    enrolled_at_ms: u64_(u)?,
                    revoked: u.arbitrary()?,
                    status: *u.choose(&STATUS)?,
                    status_since_ms: u64_(u)?,
                    last_seen_ms: u64_(u)?,
                    as_of_ms: u64_(u)?,
                })
            })?,
            rollups: vec(u, 12, device_rollups)?,
            alerts: vec(u, 6, |u| {
                Ok(AlertTransition {
                    alert_id: u64_(u)?,
                    device: if u.arbitrary()? {
                        Some(device(u)?)
                    } else {
                        None
                    },
                    rule: string(u, &["cpu_high", "device_offline"])?,
                    severity: *u.choose(&SEVERITY)?,
                    state: *u.choose(&STATES)?,
                    at_ms: u64_(u)?,
                    message: u.arbitrary()?,
                    value: if u.arbitrary()? { Some(f64_(u)?) } else { None },
                })
            })?,
            patch_compliance: vec(u, 3, |u| {
                Ok(PatchCompliance {
                    device: device(u)?,
                    missing: u.arbitrary()?,
                    missing_critical: u.arbitrary()?,
                    installed_pending_reboot: u.arbitrary()?,
                    as_of_ms: u64_(u)?,
                    detail: if u.arbitrary()? {
                        Some(PatchDetail {
                            compliance: *u.choose(&[
                                ComplianceState::Compliant,
                                ComplianceState::NonCompliant,
                                ComplianceState::UnsupportedRelease,
                                ComplianceState::NoCatalog,
                            ])?,
                            security_patches: PatchSeverityCounts {
                                critical: u.arbitrary()?,
                                high: u.arbitrary()?,
                                medium: u.arbitrary()?,
                                low: u.arbitrary()?,
                                unknown: u.arbitrary()?,
                            },
                            fixable_cves: u.arbitrary()?,
                            open_cves: u.arbitrary()?,
                            risk: u.arbitrary()?,
                            scanned_at_ms: u64_(u)?,
                            reboot_required: u.arbitrary()?,
                        })
                    } else {
                        None
                    },
                })
            })?,
            commands: vec(u, 3, |u| {
                Ok(CommandSummary {
                    device: device(u)?,
                    completed: u.arbitrary()?,
                    failed: u.arbitrary()?,
                    timed_out: u.arbitrary()?,
                    as_of_ms: u64_(u)?,
                })
            })?,
            dropped_rollups: u64_(u)?,
            foreign_tenants: vec(u, 3, |u| {
                Ok(ForeignTenant {
                    tenant: TenantId::new(string(u, &["typo-msp"])?),
                    devices: u.arbitrary()?,
                })
            })?,
            // Format 5: per-device findings (their strings go through the
            // batch's dictionary; shared names make references repeat).
            patch_findings: vec(u, 3, |u| {
                Ok(PatchFindings {
                    device: device(u)?,
                    as_of_ms: u64_(u)?,
                    patches: vec(u, 4, |u| {
                        Ok(MissingPatchEntry {
                            source: string(u, &["openssl", "bash"])?,
                            installed: string(u, &["3.0.11-1~deb12u2", "5.2.15-2"])?,
                            candidate: if u.arbitrary()? {
                                Some(string(u, &["3.0.15-1~deb12u1"])?)
                            } else {
                                None
                            },
                            binaries: u.arbitrary()?,
                            security: u.arbitrary()?,
                            severity: if u.arbitrary()? {
                                Some(*u.choose(&FindingSeverity::ALL)?)
                            } else {
                                None
                            },
                            cves: vec(u, 4, |u| string(u, &["CVE-2024-5535", "CVE-2023-5678"]))?,
                            reboot_expected: u.arbitrary()?,
                            first_seen_ms: u64_(u)?,
                        })
                    })?,
                    vulns: vec(u, 4, |u| {
                        Ok(VulnGroup {
                            source: string(u, &["openssl", "glibc"])?,
                            installed: string(u, &["3.0.11-1~deb12u2", "2.36-9"])?,
                            fixed: if u.arbitrary()? {
                                Some(string(u, &["3.0.15-1~deb12u1"])?)
                            } else {
                                None
                            },
                            fix_available: u.arbitrary()?,
                            severity: *u.choose(&FindingSeverity::ALL)?,
                            cves: vec(u, 4, |u| string(u, &["CVE-2024-5535", "CVE-2023-4911"]))?,
                        })
                    })?,
                })
            })?,
            // Format 6: devices' addresses and tags, within their
            // per-device bounds as a site sends them (beyond them the
            // decoder refuses the batch as malformed, which
            // `check_limits` does not model).
            device_facts: vec(u, 3, |u| {
                Ok(outpost_uplink::batch::DeviceIpsTags {
                    device: device(u)?,
                    ips: vec(u, 3, |u| {
                        Ok(u.choose(&["10.0.0.5", "2001:db8::5", ""])?.to_string())
                    })?,
                    tags: vec(u, 3, |u| {
                        Ok(u.choose(&["web", "eu-west", "ünïcødé"])?.to_string())
                    })?,
                })
            })?,
        })
    }
}

pub mod mutate {
    //! Byte-level mutations of a valid encoding, chosen by fuzzer bytes.

    use arbitrary::{Result, Unstructured};

    /// Applies up to `max` mutations to `bytes`: bit flips, byte sets
    /// (bincode's varint markers 251..=255 and enum/bool edges among
    /// them), truncation, insertion, deletion, and splices from `donor`.
    pub fn bytes(
        u: &mut Unstructured,
        bytes: &mut Vec<u8>,
        donor: &[u8],
        max: usize,
    ) -> Result<()> {
        let n = u.int_in_range(0..=max)?;
        for _ in 0..n {
            let len = bytes.len();
            match u.int_in_range(0..=6)? {
                0 if len > 0 => {
                    let at = u.choose_index(len)?;
                    bytes[at] ^= 1 << u.int_in_range(0..=7)?;
                }
                1 if len > 0 => {
                    let at = u.choose_index(len)?;
                    bytes[at] = *u.choose(&[0u8, 1, 2, 0x7F, 0x80, 251, 252, 253, 254, 255])?;
                }
                2 => {
                    let keep = u.int_in_range(0..=len)?;
                    bytes.truncate(keep);
                }
                3 => {
                    let at = u.int_in_range(0..=len)?;
                    let k = u.int_in_range(1..=8)?;
                    let ins = u.bytes(k.min(u.len()))?.to_vec();
                    bytes.splice(at..at, ins);
                }
                4 if len > 0 => {
                    let at = u.choose_index(len)?;
                    let k = u.int_in_range(1..=16)?;
                    bytes.drain(at..(at + k).min(len));
                }
                5 if !donor.is_empty() => {
                    let src = u.choose_index(donor.len())?;
                    let k = u.int_in_range(1..=32)?;
                    let piece = &donor[src..(src + k).min(donor.len())];
                    let dst = u.int_in_range(0..=len)?;
                    let end = (dst + piece.len()).min(len);
                    bytes.splice(dst..end, piece.iter().copied());
                }
                6 if len > 0 => {
                    // Duplicate a range (repeated elements, doubled lengths).
                    let at = u.choose_index(len)?;
                    let k = u.int_in_range(1..=16)?;
                    let piece = bytes[at..(at + k).min(len)].to_vec();
                    bytes.splice(at..at, piece);
                }
                _ => {}
            }
        }
        Ok(())
    }
}
