//! Unit tests of every state transition of both ends, and end-to-end
//! scenarios through the [`Pair`] harness.

use bytes::BytesMut;

use super::agent::{AgentEvent, AgentSession, EncodedRecords, Ended, encode_records};
use super::appliance::{ApplianceEvent, ApplianceSession};
use super::testing::*;
use super::*;
use crate::frame::{FrameError, decode_payload, split_frame};
use crate::ids::{CommandId, TransferId};
use crate::messages::*;
use crate::{MIN_SESSION_PROTOCOL_VERSION, SESSION_PROTOCOL_VERSION};

fn frames<T: serde::de::DeserializeOwned>(data: &[u8]) -> Vec<T> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Some(p) = split_frame(&mut buf, usize::MAX >> 1).unwrap() {
        out.push(decode_payload(&p).unwrap());
    }
    assert!(buf.is_empty());
    out
}

/// Every frame the agent wants to send, per flow.
fn agent_out(s: &mut AgentSession) -> Vec<(Flow, AgentFrame)> {
    let mut v = Vec::new();
    while let Some(t) = s.poll_transmit() {
        for f in frames::<AgentFrame>(&t.data) {
            v.push((t.flow, f));
        }
    }
    v
}

fn appliance_out(s: &mut ApplianceSession) -> Vec<(Flow, ApplianceFrame)> {
    let mut v = Vec::new();
    while let Some(t) = s.poll_transmit() {
        for f in frames::<ApplianceFrame>(&t.data) {
            v.push((t.flow, f));
        }
    }
    v
}

fn agent_events(s: &mut AgentSession) -> Vec<AgentEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn appliance_events(s: &mut ApplianceSession) -> Vec<ApplianceEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn welcome(version: u16, last: u64, max_frame: u32) -> ApplianceFrame {
    ApplianceFrame::Welcome(Welcome {
        protocol_version: version,
        device_id: TEST_DEVICE,
        last_stored_seq: last,
        max_frame_bytes: max_frame,
    })
}

fn hello(version: u16) -> AgentFrame {
    AgentFrame::Hello(Hello {
        protocol_version: version,
        agent_version: "t".into(),
        heartbeat_interval_ms: 1_000,
        metrics_interval_ms: 1_000,
    })
}

/// An agent end past Welcome (protocol `version`).
fn established_agent(version: u16, last: u64) -> AgentSession {
    let mut a = AgentSession::new(agent_config(), 0);
    agent_out(&mut a);
    a.handle_frame(Flow::Records, welcome(version, last, 1 << 20), 0);
    agent_events(&mut a);
    agent_out(&mut a);
    a
}

/// An appliance end past Hello and accept (protocol `version`), with the
/// given flows opened by the agent.
fn established_appliance(version: u16, flows: &[Flow]) -> ApplianceSession {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(version), 0);
    appliance_events(&mut s);
    s.accept(0);
    appliance_out(&mut s);
    for f in flows {
        s.handle_open_flow(*f, 0);
    }
    s
}

fn cid(n: u8) -> CommandId {
    CommandId([n; 16])
}

fn failed(a: &AgentSession) -> String {
    match a.ended() {
        Some(Ended::Failed(m)) => m.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------- agent end

#[test]
fn agent_sends_hello_first_offering_its_configured_version() {
    let mut a = AgentSession::new(agent_config(), 0);
    let out = agent_out(&mut a);
    assert_eq!(out.len(), 1);
    let (Flow::Records, AgentFrame::Hello(h)) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(h.protocol_version, SESSION_PROTOCOL_VERSION);
    assert!(a.records_wanted().is_none(), "nothing before Welcome");
    let mut cfg = agent_config();
    cfg.protocol_version = 1;
    let mut a = AgentSession::new(cfg, 0);
    let (_, AgentFrame::Hello(h)) = &agent_out(&mut a)[0] else {
        panic!()
    };
    assert_eq!(h.protocol_version, 1);
}

#[test]
fn welcome_establishes_the_session_and_reports_what_is_stored() {
    let mut a = AgentSession::new(agent_config(), 0);
    agent_out(&mut a);
    a.handle_frame(Flow::Records, welcome(2, 41, 4096), 5);
    assert_eq!(
        agent_events(&mut a),
        vec![AgentEvent::Established {
            protocol_version: 2,
            last_stored_seq: 41,
            max_frame_bytes: 4096
        }]
    );
    assert_eq!(a.protocol_version(), Some(2));
    assert_eq!(a.records_wanted(), Some(42));
    assert_eq!(a.acked(), 41);
}

#[test]
fn a_frame_limit_larger_than_the_agent_reads_is_capped() {
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_frame(Flow::Records, welcome(2, 0, 16 << 20), 0);
    assert_eq!(a.max_frame_bytes(), crate::DEFAULT_MAX_FRAME_BYTES);
}

#[test]
fn welcome_with_a_frame_limit_below_1_kib_ends_the_session() {
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_frame(Flow::Records, welcome(2, 0, 1023), 0);
    assert!(
        failed(&a).contains("frame limit of 1023 bytes"),
        "{}",
        failed(&a)
    );
    assert!(agent_out(&mut a).is_empty());
}

#[test]
fn welcome_with_a_version_the_agent_did_not_offer_ends_the_session() {
    let mut cfg = agent_config();
    cfg.protocol_version = 1;
    let mut a = AgentSession::new(cfg, 0);
    a.handle_frame(Flow::Records, welcome(2, 0, 4096), 0);
    assert!(failed(&a).contains("protocol 2"), "{}", failed(&a));
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_frame(Flow::Records, welcome(0, 0, 4096), 0);
    assert!(failed(&a).contains("protocol 0"));
}

#[test]
fn no_welcome_within_the_timeout_ends_the_session() {
    let mut a = AgentSession::new(agent_config(), 1_000);
    assert_eq!(a.poll_timeout(), Some(16_000));
    a.handle_timeout(15_999);
    assert!(a.ended().is_none());
    a.handle_timeout(16_000);
    assert!(
        failed(&a).contains("no Welcome within 15s"),
        "{}",
        failed(&a)
    );
}

#[test]
fn a_first_frame_other_than_welcome_ends_the_session() {
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_frame(Flow::Records, ApplianceFrame::Ack(Ack { up_to_seq: 1 }), 0);
    assert_eq!(failed(&a), "expected Welcome, got Ack");
}

#[test]
fn a_second_welcome_is_a_protocol_violation() {
    let mut a = established_agent(2, 0);
    a.handle_frame(Flow::Records, welcome(2, 0, 4096), 0);
    assert_eq!(failed(&a), "protocol violation: second Welcome");
}

#[test]
fn close_from_the_appliance_ends_the_session_with_its_reason() {
    for established in [false, true] {
        let mut a = if established {
            established_agent(2, 0)
        } else {
            AgentSession::new(agent_config(), 0)
        };
        let close = Close {
            reason: CloseReason::Revoked,
            message: "gone".into(),
        };
        a.handle_frame(Flow::Records, ApplianceFrame::Close(close.clone()), 0);
        assert_eq!(a.ended(), Some(&Ended::Closed(close)));
        assert_eq!(a.poll_timeout(), None);
    }
    let mut a = established_agent(2, 0);
    let close = Close {
        reason: CloseReason::Superseded,
        message: "newer".into(),
    };
    a.handle_peer_close(close.clone());
    assert_eq!(a.ended(), Some(&Ended::Closed(close)));
}

#[test]
fn a_stream_that_ends_ends_the_session() {
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_stream_end(Flow::Records, "");
    assert_eq!(failed(&a), "session stream ended before Welcome");
    let mut a = established_agent(2, 0);
    a.handle_stream_end(Flow::Records, "reset");
    assert_eq!(failed(&a), "session stream ended: reset");
    let mut a = established_agent(2, 0);
    a.handle_malformed(Flow::Commands, &FrameError::Empty);
    assert!(failed(&a).contains("malformed frame on the commands stream"));
}

#[test]
fn records_are_sent_while_the_window_has_room_and_acks_reopen_it() {
    let mut a = established_agent(2, 10);
    // Window: 64 sequence numbers between the last ack and the cursor.
    let batch: Vec<Record> = (11..=74).map(heartbeat).collect();
    assert_eq!(a.send_records(batch, 1), Some(74));
    assert_eq!(a.records_wanted(), None, "64 in flight");
    let out = agent_out(&mut a);
    assert!(matches!(&out[..], [(Flow::Records, AgentFrame::Records(r))] if r.len() == 64));
    a.handle_frame(Flow::Records, ApplianceFrame::Ack(Ack { up_to_seq: 20 }), 2);
    assert_eq!(
        agent_events(&mut a),
        vec![AgentEvent::RecordsAcked { up_to: 20 }]
    );
    assert_eq!(a.records_wanted(), Some(75));
    // An ack that does not move is not reported.
    a.handle_frame(Flow::Records, ApplianceFrame::Ack(Ack { up_to_seq: 15 }), 3);
    assert!(agent_events(&mut a).is_empty());
    assert_eq!(a.acked(), 20);
}

#[test]
fn an_empty_read_sends_nothing() {
    let mut a = established_agent(2, 0);
    assert_eq!(a.send_records(Vec::new(), 0), None);
    assert!(agent_out(&mut a).is_empty());
}

#[test]
fn the_ack_timeout_runs_only_while_records_are_in_flight() {
    let mut a = established_agent(2, 0);
    assert_eq!(a.poll_timeout(), None, "nothing in flight");
    a.handle_timeout(1_000_000);
    assert!(a.ended().is_none());
    // Sending after a quiet spell starts the ack clock then.
    a.send_records(vec![heartbeat(1)], 50_000);
    assert_eq!(a.poll_timeout(), Some(60_000));
    a.handle_frame(
        Flow::Records,
        ApplianceFrame::Ack(Ack { up_to_seq: 1 }),
        55_000,
    );
    assert_eq!(a.poll_timeout(), None);
    a.send_records(vec![heartbeat(2)], 56_000);
    // Any frame heard from the appliance counts as life.
    a.handle_frame(
        Flow::Records,
        ApplianceFrame::Ack(Ack { up_to_seq: 1 }),
        58_000,
    );
    assert_eq!(a.poll_timeout(), Some(68_000));
    a.handle_timeout(67_999);
    assert!(a.ended().is_none());
    a.handle_timeout(68_500);
    assert_eq!(
        failed(&a),
        "no acknowledgement for 10.5s with records in flight; reconnecting"
    );
}

#[test]
fn a_record_larger_than_the_frame_limit_is_reported_undeliverable_and_skipped() {
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_frame(Flow::Records, welcome(2, 0, 1024), 0);
    agent_events(&mut a);
    agent_out(&mut a);
    let mut host = MemAgent::new();
    host.record_sized(5_000);
    host.record();
    assert_eq!(a.send_records(host.records_from(1, 10), 0), None);
    let ev = agent_events(&mut a);
    assert!(
        matches!(ev[..], [AgentEvent::RecordUndeliverable { seq: 1, len, max: 1024 }] if len > 5_000),
        "{ev:?}"
    );
    assert!(agent_out(&mut a).is_empty());
    assert_eq!(a.records_wanted(), Some(2), "the record behind it goes on");
    assert_eq!(a.send_records(host.records_from(2, 10), 0), Some(2));
    // The same decision as a pure function.
    let mut out = BytesMut::new();
    let r = encode_records(host.records_from(1, 1), 1024, &mut out).unwrap();
    assert!(matches!(
        r,
        Some(EncodedRecords::Undeliverable { seq: 1, .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn a_batch_too_big_for_one_frame_is_halved_until_it_fits() {
    let mut a = AgentSession::new(agent_config(), 0);
    a.handle_frame(Flow::Records, welcome(2, 0, 4096), 0);
    agent_out(&mut a);
    let mut host = MemAgent::new();
    for _ in 0..8 {
        host.record_sized(800);
    }
    let last = a.send_records(host.records_from(1, 8), 0).unwrap();
    assert!(last < 8, "{last}");
    let out = agent_out(&mut a);
    let (_, AgentFrame::Records(r)) = &out[0] else {
        panic!()
    };
    assert_eq!(r.last().unwrap().seq, last);
    assert_eq!(a.records_wanted(), Some(last + 1));
}

#[test]
fn goodbye_is_sent_and_ends_the_session() {
    let mut a = established_agent(2, 0);
    a.goodbye("agent stopping");
    assert_eq!(a.ended(), Some(&Ended::Shutdown));
    let out = agent_out(&mut a);
    assert!(
        matches!(&out[..], [(Flow::Records, AgentFrame::Goodbye { reason })] if reason == "agent stopping")
    );
    a.handle_frame(Flow::Records, ApplianceFrame::Ack(Ack { up_to_seq: 9 }), 0);
    assert!(
        agent_events(&mut a).is_empty(),
        "an ended session ignores frames"
    );
}

#[test]
fn protocol_1_opens_no_remote_flows_and_refuses_remote_sends() {
    let mut a = AgentSession::new(agent_config(), 0);
    agent_out(&mut a);
    a.handle_frame(Flow::Records, welcome(1, 0, 4096), 0);
    assert!(agent_out(&mut a).is_empty(), "no OpenFlow");
    assert!(!a.has_remote_flows());
    assert_eq!(
        a.ack_command(cid(1)),
        Err(SendError::FlowUnavailable(Flow::Commands))
    );
    assert_eq!(
        a.send_output(cid(1), 0, vec![1]),
        Err(SendError::FlowUnavailable(Flow::Commands))
    );
    assert_eq!(a.output_room(), 0);
    assert_eq!(a.file_room(), 0);
    assert_eq!(
        a.ack_file(TransferId([1; 16]), 0),
        Err(SendError::FlowUnavailable(Flow::Files))
    );
    // A command frame on a protocol 1 session is a violation.
    a.handle_frame(
        Flow::Commands,
        ApplianceFrame::Command(CommandDown::Cancel { id: cid(1) }),
        0,
    );
    assert!(failed(&a).contains("protocol violation"));
}

#[test]
fn protocol_2_opens_the_command_and_file_flows_after_welcome() {
    let mut a = AgentSession::new(agent_config(), 0);
    agent_out(&mut a);
    a.handle_frame(Flow::Records, welcome(2, 0, 4096), 0);
    assert_eq!(
        agent_out(&mut a),
        vec![
            (Flow::Commands, AgentFrame::OpenFlow(Flow::Commands)),
            (Flow::Files, AgentFrame::OpenFlow(Flow::Files)),
        ]
    );
    assert_eq!(a.max_chunk_bytes(), 4096 - CHUNK_OVERHEAD_BYTES);
}

#[test]
fn command_frames_become_events_and_host_answers_become_frames() {
    let mut a = established_agent(2, 0);
    let cmd = Command {
        id: cid(1),
        spec: b"uptime".to_vec(),
    };
    for (down, ev) in [
        (
            CommandDown::Command(cmd.clone()),
            AgentEvent::Command(cmd.clone()),
        ),
        (
            CommandDown::Cancel { id: cid(1) },
            AgentEvent::CancelCommand { id: cid(1) },
        ),
        (
            CommandDown::OutputAck {
                id: cid(1),
                up_to: 3,
            },
            AgentEvent::OutputAcked {
                id: cid(1),
                up_to: 3,
            },
        ),
        (
            CommandDown::ResultAck { id: cid(1) },
            AgentEvent::ResultAcked { id: cid(1) },
        ),
    ] {
        a.handle_frame(Flow::Commands, ApplianceFrame::Command(down), 0);
        assert_eq!(agent_events(&mut a), vec![ev]);
    }
    a.ack_command(cid(1)).unwrap();
    a.command_started(cid(1), 7).unwrap();
    a.send_output(cid(1), 0, b"up".to_vec()).unwrap();
    let result = CommandResult {
        id: cid(1),
        outcome: CommandOutcome::Exited { code: 0 },
        output_bytes: 2,
        finished_ms: 9,
    };
    a.send_result(result.clone()).unwrap();
    assert_eq!(
        agent_out(&mut a),
        vec![
            (
                Flow::Commands,
                AgentFrame::Command(CommandUp::Ack { id: cid(1) })
            ),
            (
                Flow::Commands,
                AgentFrame::Command(CommandUp::Started {
                    id: cid(1),
                    started_ms: 7
                })
            ),
            (
                Flow::Commands,
                AgentFrame::Command(CommandUp::Output(CommandOutput {
                    id: cid(1),
                    offset: 0,
                    bytes: b"up".to_vec()
                }))
            ),
            (
                Flow::Commands,
                AgentFrame::Command(CommandUp::Result(result))
            ),
        ]
    );
}

#[test]
fn a_frame_on_the_wrong_stream_ends_the_agent_session() {
    let mut a = established_agent(2, 0);
    a.handle_frame(
        Flow::Records,
        ApplianceFrame::Command(CommandDown::Cancel { id: cid(1) }),
        0,
    );
    assert_eq!(
        failed(&a),
        "protocol violation: Command frame on the records stream"
    );
    let mut a = established_agent(2, 0);
    a.handle_frame(Flow::Files, ApplianceFrame::Ack(Ack { up_to_seq: 1 }), 0);
    assert_eq!(
        failed(&a),
        "protocol violation: Ack frame on the files stream"
    );
}

#[test]
fn the_output_window_fills_and_output_or_result_acks_reopen_it() {
    let mut a = established_agent(2, 0);
    let chunk = vec![0u8; a.max_chunk_bytes()];
    let mut offset = 0u64;
    while a.output_room() > 0 {
        a.send_output(cid(1), offset, chunk.clone()).unwrap();
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, OUTPUT_WINDOW_BYTES);
    assert_eq!(
        a.send_output(cid(1), offset, chunk.clone()),
        Err(SendError::WindowFull(Flow::Commands))
    );
    a.handle_frame(
        Flow::Commands,
        ApplianceFrame::Command(CommandDown::OutputAck {
            id: cid(1),
            up_to: chunk.len() as u64,
        }),
        0,
    );
    assert_eq!(a.output_room(), chunk.len() as u64);
    a.handle_frame(
        Flow::Commands,
        ApplianceFrame::Command(CommandDown::ResultAck { id: cid(1) }),
        0,
    );
    assert_eq!(
        a.output_room(),
        OUTPUT_WINDOW_BYTES,
        "a stored result releases its output"
    );
    assert_eq!(
        a.send_output(cid(2), 0, vec![0; a.max_chunk_bytes() + 1]),
        Err(SendError::TooLarge {
            len: a.max_chunk_bytes() + 1,
            max: a.max_chunk_bytes()
        })
    );
}

#[test]
fn pushed_file_chunks_beyond_the_window_end_the_agent_session() {
    let mut a = established_agent(2, 0);
    let t = TransferId([5; 16]);
    let mut offset = 0;
    let chunk = vec![1u8; MAX_CHUNK_BYTES];
    while offset < FILE_WINDOW_BYTES + MAX_CHUNK_BYTES as u64 {
        a.handle_frame(
            Flow::Files,
            ApplianceFrame::File(FileFrame::Chunk(FileChunk {
                transfer: t,
                offset,
                bytes: chunk.clone(),
                last: false,
            })),
            0,
        );
        offset += chunk.len() as u64;
    }
    assert!(a.ended().is_none(), "one chunk of slack");
    a.handle_frame(
        Flow::Files,
        ApplianceFrame::File(FileFrame::Chunk(FileChunk {
            transfer: t,
            offset,
            bytes: vec![1],
            last: true,
        })),
        0,
    );
    assert!(failed(&a).contains("file flow"), "{}", failed(&a));
}

#[test]
fn pulled_file_chunks_follow_the_window_and_aborts_release_it() {
    let mut a = established_agent(2, 0);
    let t = TransferId([6; 16]);
    let n = a.max_chunk_bytes();
    let mut offset = 0u64;
    while a.file_room() > 0 {
        a.send_file_chunk(FileChunk {
            transfer: t,
            offset,
            bytes: vec![0; n],
            last: false,
        })
        .unwrap();
        offset += n as u64;
    }
    assert_eq!(
        a.send_file_chunk(FileChunk {
            transfer: t,
            offset,
            bytes: vec![0; 1],
            last: true,
        }),
        Err(SendError::WindowFull(Flow::Files))
    );
    a.handle_frame(
        Flow::Files,
        ApplianceFrame::File(FileFrame::Ack {
            transfer: t,
            up_to: offset,
        }),
        0,
    );
    assert_eq!(
        agent_events(&mut a),
        vec![AgentEvent::FileAcked {
            transfer: t,
            up_to: offset
        }]
    );
    assert_eq!(a.file_room(), FILE_WINDOW_BYTES);
    a.send_file_chunk(FileChunk {
        transfer: t,
        offset,
        bytes: vec![0; n],
        last: false,
    })
    .unwrap();
    a.handle_frame(
        Flow::Files,
        ApplianceFrame::File(FileFrame::Abort {
            transfer: t,
            reason: "no space".into(),
        }),
        0,
    );
    assert_eq!(a.file_room(), FILE_WINDOW_BYTES);
    assert_eq!(
        agent_events(&mut a),
        vec![AgentEvent::FileAborted {
            transfer: t,
            reason: "no space".into()
        }]
    );
    a.abort_file(t, "changed my mind").unwrap();
    let out = agent_out(&mut a);
    assert!(matches!(
        out.last(),
        Some((Flow::Files, AgentFrame::File(FileFrame::Abort { .. })))
    ));
}

// ------------------------------------------------------------ appliance end

fn closed(s: &ApplianceSession) -> (CloseReason, String) {
    let (r, m) = s.close_reason().expect("closed");
    (r, m.to_string())
}

#[test]
fn the_first_frame_must_be_hello() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, AgentFrame::Records(vec![heartbeat(1)]), 0);
    assert_eq!(
        closed(&s),
        (
            CloseReason::ProtocolViolation,
            "first frame must be Hello".into()
        )
    );
    assert!(appliance_events(&mut s).is_empty());
}

#[test]
fn hello_below_the_lowest_version_is_refused_as_unsupported() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(MIN_SESSION_PROTOCOL_VERSION - 1), 0);
    let (r, m) = closed(&s);
    assert_eq!(r, CloseReason::UnsupportedVersion);
    assert_eq!(m, "agent speaks protocol 0, this appliance speaks 1 to 3");
}

#[test]
fn an_agent_of_protocol_1_is_welcomed_with_protocol_1() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(1), 0);
    assert!(
        matches!(&appliance_events(&mut s)[..], [ApplianceEvent::Hello(h)] if h.protocol_version == 1)
    );
    assert!(appliance_out(&mut s).is_empty(), "no Welcome before accept");
    s.accept(17);
    assert_eq!(
        appliance_out(&mut s),
        vec![(
            Flow::Records,
            ApplianceFrame::Welcome(Welcome {
                protocol_version: 1,
                device_id: TEST_DEVICE,
                last_stored_seq: 17,
                max_frame_bytes: crate::DEFAULT_MAX_FRAME_BYTES as u32,
            })
        )]
    );
    assert!(!s.has_remote_flows());
    assert_eq!(
        s.send_command(Command {
            id: cid(1),
            spec: vec![]
        }),
        Err(SendError::FlowUnavailable(Flow::Commands))
    );
    s.handle_open_flow(Flow::Commands, 0);
    assert_eq!(
        closed(&s),
        (
            CloseReason::ProtocolViolation,
            "a commands stream needs protocol 2 or later".into()
        )
    );
}

#[test]
fn a_newer_agent_is_welcomed_with_the_appliances_version() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(SESSION_PROTOCOL_VERSION + 5), 0);
    s.accept(0);
    let out = appliance_out(&mut s);
    let (_, ApplianceFrame::Welcome(w)) = &out[0] else {
        panic!()
    };
    assert_eq!(w.protocol_version, SESSION_PROTOCOL_VERSION);
}

#[test]
fn no_hello_within_the_timeout_closes_the_session() {
    let mut s = ApplianceSession::new(appliance_config(), 100);
    assert_eq!(s.poll_timeout(), Some(10_100));
    s.handle_timeout(10_099);
    assert!(!s.is_closed());
    s.handle_timeout(10_100);
    assert_eq!(
        closed(&s),
        (CloseReason::ProtocolViolation, "no Hello received".into())
    );
    let mut s = established_appliance(2, &[]);
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(u64::MAX);
    assert!(!s.is_closed());
}

#[test]
fn a_second_hello_is_a_protocol_violation() {
    let mut s = established_appliance(2, &[]);
    s.handle_frame(Flow::Records, hello(2), 0);
    assert_eq!(
        closed(&s),
        (CloseReason::ProtocolViolation, "second Hello".into())
    );
}

#[test]
fn consecutive_record_frames_become_one_event_after_the_hello() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(2), 0);
    s.handle_frame(Flow::Records, AgentFrame::Records(vec![heartbeat(1)]), 0);
    s.handle_frame(
        Flow::Records,
        AgentFrame::Records(vec![heartbeat(2), heartbeat(3)]),
        0,
    );
    s.handle_frame(
        Flow::Records,
        AgentFrame::Goodbye {
            reason: "bye".into(),
        },
        0,
    );
    let ev = appliance_events(&mut s);
    assert!(matches!(&ev[0], ApplianceEvent::Hello(_)));
    assert_eq!(
        ev[1],
        ApplianceEvent::Records(vec![heartbeat(1), heartbeat(2), heartbeat(3)])
    );
    assert_eq!(
        ev[2],
        ApplianceEvent::Goodbye {
            reason: "bye".into()
        }
    );
    assert_eq!(s.received(), 3);
}

#[test]
fn durable_records_are_acked_cumulatively_and_only_when_the_ack_moves() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(2), 0);
    s.records_durable(3);
    appliance_events(&mut s);
    assert!(appliance_out(&mut s).is_empty(), "no ack before Welcome");
    s.accept(5);
    appliance_out(&mut s);
    s.records_durable(5);
    assert!(appliance_out(&mut s).is_empty(), "Welcome said 5 already");
    s.records_durable(9);
    s.records_durable(7);
    assert_eq!(
        appliance_out(&mut s),
        vec![(Flow::Records, ApplianceFrame::Ack(Ack { up_to_seq: 9 }))]
    );
    assert_eq!(s.acked(), 9);
}

#[test]
fn undecodable_frames_close_with_the_matching_reason() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_malformed(Flow::Records, &FrameError::Oversize { len: 9, max: 8 });
    assert_eq!(closed(&s).0, CloseReason::OversizeFrame);
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_malformed(Flow::Records, &FrameError::Empty);
    assert_eq!(closed(&s).0, CloseReason::MalformedFrame);
}

#[test]
fn a_closed_session_ignores_frames_and_sends_nothing() {
    let mut s = established_appliance(2, &[Flow::Commands]);
    s.records_durable(4);
    s.close(CloseReason::ShuttingDown, "bye");
    assert!(
        appliance_out(&mut s).is_empty(),
        "pending frames are dropped"
    );
    s.handle_frame(Flow::Records, AgentFrame::Records(vec![heartbeat(1)]), 0);
    assert!(appliance_events(&mut s).is_empty());
    s.close(CloseReason::Internal, "second close");
    assert_eq!(
        closed(&s),
        (CloseReason::ShuttingDown, "bye".into()),
        "the first reason stays"
    );
}

#[test]
fn commands_wait_for_the_command_flow_then_go_out_in_order() {
    let mut s = established_appliance(2, &[]);
    for n in 1..=3 {
        s.send_command(Command {
            id: cid(n),
            spec: vec![n],
        })
        .unwrap();
    }
    s.cancel_command(cid(9)).unwrap();
    assert!(
        appliance_out(&mut s).is_empty(),
        "the agent has not opened the flow"
    );
    assert_eq!(s.commands_pending(), (0, 3));
    s.handle_open_flow(Flow::Commands, 0);
    let out = appliance_out(&mut s);
    let kinds: Vec<String> = out
        .iter()
        .map(|(f, fr)| {
            assert_eq!(*f, Flow::Commands);
            match fr {
                ApplianceFrame::Command(CommandDown::Command(c)) => format!("run {}", c.spec[0]),
                ApplianceFrame::Command(CommandDown::Cancel { .. }) => "cancel".into(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(kinds, ["cancel", "run 1", "run 2", "run 3"]);
    assert_eq!(s.commands_pending(), (3, 0));
}

#[test]
fn the_command_window_holds_back_commands_until_acks_free_it() {
    let mut s = established_appliance(2, &[Flow::Commands]);
    for n in 0..(COMMAND_WINDOW + 2) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(n as u64).to_be_bytes());
        s.send_command(Command {
            id: CommandId(id),
            spec: vec![],
        })
        .unwrap();
    }
    assert_eq!(appliance_out(&mut s).len(), COMMAND_WINDOW);
    assert_eq!(s.commands_pending(), (COMMAND_WINDOW, 2));
    let mut first = [0u8; 16];
    first[..8].copy_from_slice(&0u64.to_be_bytes());
    s.handle_frame(
        Flow::Commands,
        AgentFrame::Command(CommandUp::Ack {
            id: CommandId(first),
        }),
        0,
    );
    assert_eq!(
        appliance_events(&mut s),
        vec![ApplianceEvent::CommandAcked {
            id: CommandId(first)
        }]
    );
    assert_eq!(appliance_out(&mut s).len(), 1, "one more goes out");
    assert_eq!(s.commands_pending(), (COMMAND_WINDOW, 1));
}

#[test]
fn a_command_offered_twice_on_a_session_is_sent_once() {
    let mut s = established_appliance(2, &[Flow::Commands]);
    let c = Command {
        id: cid(1),
        spec: b"x".to_vec(),
    };
    s.send_command(c.clone()).unwrap();
    s.send_command(c).unwrap();
    assert_eq!(appliance_out(&mut s).len(), 1);
}

#[test]
fn cancelling_a_queued_command_removes_it_before_it_is_sent() {
    let mut s = established_appliance(2, &[]);
    s.send_command(Command {
        id: cid(1),
        spec: vec![],
    })
    .unwrap();
    assert_eq!(s.cancel_command(cid(1)), Ok(true));
    assert_eq!(
        appliance_events(&mut s),
        vec![ApplianceEvent::CommandWithdrawn { id: cid(1) }]
    );
    s.handle_open_flow(Flow::Commands, 0);
    assert!(appliance_out(&mut s).is_empty());
    // A sent one gets a Cancel.
    s.send_command(Command {
        id: cid(2),
        spec: vec![],
    })
    .unwrap();
    appliance_out(&mut s);
    assert_eq!(s.cancel_command(cid(2)), Ok(false));
    assert_eq!(
        appliance_out(&mut s),
        vec![(
            Flow::Commands,
            ApplianceFrame::Command(CommandDown::Cancel { id: cid(2) })
        )]
    );
}

#[test]
fn a_command_larger_than_the_agents_frame_limit_is_refused() {
    let mut s = established_appliance(2, &[Flow::Commands]);
    let r = s.send_command(Command {
        id: cid(1),
        spec: vec![0; crate::DEFAULT_MAX_FRAME_BYTES],
    });
    assert!(matches!(r, Err(SendError::TooLarge { .. })), "{r:?}");
    assert_eq!(s.commands_pending(), (0, 0));
}

#[test]
fn opening_a_flow_twice_or_the_records_flow_is_a_violation() {
    let mut s = established_appliance(2, &[Flow::Files]);
    s.handle_open_flow(Flow::Files, 0);
    assert_eq!(
        closed(&s),
        (
            CloseReason::ProtocolViolation,
            "the files stream is already open".into()
        )
    );
    let mut s = established_appliance(2, &[]);
    s.handle_open_flow(Flow::Records, 0);
    assert!(s.is_closed());
}

#[test]
fn frames_of_a_flow_the_agent_did_not_open_or_on_the_wrong_stream_are_violations() {
    let mut s = established_appliance(2, &[]);
    s.handle_frame(
        Flow::Commands,
        AgentFrame::Command(CommandUp::Ack { id: cid(1) }),
        0,
    );
    assert_eq!(
        closed(&s),
        (
            CloseReason::ProtocolViolation,
            "Command frame on the commands stream".into()
        )
    );
    let mut s = established_appliance(2, &[Flow::Commands]);
    s.handle_frame(Flow::Commands, AgentFrame::Records(vec![]), 0);
    assert_eq!(
        closed(&s),
        (
            CloseReason::ProtocolViolation,
            "Records frame on the commands stream".into()
        )
    );
}

#[test]
fn agent_command_frames_become_events() {
    let mut s = established_appliance(2, &[Flow::Commands]);
    let result = CommandResult {
        id: cid(1),
        outcome: CommandOutcome::Refused {
            reason: "remote_commands = false".into(),
        },
        output_bytes: 0,
        finished_ms: 3,
    };
    let out = CommandOutput {
        id: cid(1),
        offset: 0,
        bytes: b"hi".to_vec(),
    };
    for (up, ev) in [
        (
            CommandUp::Started {
                id: cid(1),
                started_ms: 2,
            },
            ApplianceEvent::CommandStarted {
                id: cid(1),
                started_ms: 2,
            },
        ),
        (CommandUp::Output(out.clone()), ApplianceEvent::Output(out)),
        (
            CommandUp::Result(result.clone()),
            ApplianceEvent::Result(result),
        ),
    ] {
        s.handle_frame(Flow::Commands, AgentFrame::Command(up), 0);
        assert_eq!(appliance_events(&mut s), vec![ev]);
    }
    s.ack_output(cid(1), 2).unwrap();
    s.ack_result(cid(1)).unwrap();
    assert_eq!(
        appliance_out(&mut s),
        vec![
            (
                Flow::Commands,
                ApplianceFrame::Command(CommandDown::OutputAck {
                    id: cid(1),
                    up_to: 2
                })
            ),
            (
                Flow::Commands,
                ApplianceFrame::Command(CommandDown::ResultAck { id: cid(1) })
            ),
        ]
    );
}

#[test]
fn output_beyond_the_window_closes_the_session() {
    let mut s = established_appliance(2, &[Flow::Commands]);
    let mut offset = 0u64;
    while offset < OUTPUT_WINDOW_BYTES + MAX_CHUNK_BYTES as u64 {
        s.handle_frame(
            Flow::Commands,
            AgentFrame::Command(CommandUp::Output(CommandOutput {
                id: cid(1),
                offset,
                bytes: vec![0; MAX_CHUNK_BYTES],
            })),
            0,
        );
        offset += MAX_CHUNK_BYTES as u64;
    }
    assert!(!s.is_closed(), "window plus one chunk");
    s.handle_frame(
        Flow::Commands,
        AgentFrame::Command(CommandUp::Output(CommandOutput {
            id: cid(2),
            offset: 0,
            bytes: vec![0],
        })),
        0,
    );
    let (r, m) = closed(&s);
    assert_eq!(r, CloseReason::ProtocolViolation);
    assert!(m.starts_with("output flow:"), "{m}");
}

#[test]
fn pushed_file_chunks_need_the_file_flow_and_follow_the_window() {
    let t = TransferId([3; 16]);
    let chunk = |offset: u64| FileChunk {
        transfer: t,
        offset,
        bytes: vec![7; MAX_CHUNK_BYTES],
        last: false,
    };
    let mut s = established_appliance(2, &[]);
    assert_eq!(
        s.send_file_chunk(chunk(0)),
        Err(SendError::FlowUnavailable(Flow::Files))
    );
    assert_eq!(s.file_room(), 0);
    s.handle_open_flow(Flow::Files, 0);
    let mut offset = 0;
    while s.file_room() > 0 {
        s.send_file_chunk(chunk(offset)).unwrap();
        offset += MAX_CHUNK_BYTES as u64;
    }
    assert_eq!(offset, FILE_WINDOW_BYTES);
    assert_eq!(
        s.send_file_chunk(chunk(offset)),
        Err(SendError::WindowFull(Flow::Files))
    );
    s.handle_frame(
        Flow::Files,
        AgentFrame::File(FileFrame::Ack {
            transfer: t,
            up_to: MAX_CHUNK_BYTES as u64,
        }),
        0,
    );
    assert_eq!(s.file_room(), MAX_CHUNK_BYTES as u64);
    assert_eq!(
        appliance_events(&mut s),
        vec![ApplianceEvent::FileAcked {
            transfer: t,
            up_to: MAX_CHUNK_BYTES as u64
        }]
    );
    s.abort_file(t, "cancelled").unwrap();
    assert_eq!(s.file_room(), FILE_WINDOW_BYTES);
}

#[test]
fn pulled_file_chunks_beyond_the_window_close_the_session() {
    let mut s = established_appliance(2, &[Flow::Files]);
    let t = TransferId([4; 16]);
    let mut offset = 0;
    while offset <= FILE_WINDOW_BYTES + MAX_CHUNK_BYTES as u64 {
        s.handle_frame(
            Flow::Files,
            AgentFrame::File(FileFrame::Chunk(FileChunk {
                transfer: t,
                offset,
                bytes: vec![1; MAX_CHUNK_BYTES],
                last: false,
            })),
            0,
        );
        if s.is_closed() {
            break;
        }
        assert!(matches!(
            appliance_events(&mut s)[..],
            [ApplianceEvent::FileChunk(_)]
        ));
        // The host acks the first window's worth, late.
        if offset == 0 {
            s.ack_file(t, 0).unwrap();
        }
        offset += MAX_CHUNK_BYTES as u64;
    }
    assert!(closed(&s).1.starts_with("file flow:"));
}

// ---------------------------------------------------------- through a Pair

#[test]
fn records_flow_end_to_end_and_are_acked_once_stored() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    for _ in 0..500 {
        a.record();
    }
    p.run(&mut a, &mut b);
    assert_eq!(b.hwm, 500);
    assert_eq!(a.acked, 500);
    assert!(a.buffer.is_empty());
    assert!(b.stored.values().all(|(_, n)| *n == 1));
}

#[test]
fn records_are_acked_only_after_the_writer_commits() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    b.auto_commit = false;
    a.record();
    a.record();
    p.run(&mut a, &mut b);
    assert_eq!(a.acked, 0);
    assert_eq!(b.pending.len(), 2);
    b.commit(&mut p.appliance);
    p.transmit();
    p.run(&mut a, &mut b);
    assert_eq!(a.acked, 2);
}

#[test]
fn records_stored_before_a_cut_are_not_sent_again_after_welcome() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    p.run(&mut a, &mut b);
    for _ in 0..10 {
        a.record();
    }
    p.pump(&mut a, &mut b);
    // The records arrive and are committed; the ack is lost in the cut.
    while p.deliver_up(Flow::Records).is_some() {}
    p.pump(&mut a, &mut b);
    assert_eq!(b.hwm, 10);
    p.reconnect();
    a.session_down();
    p.run(&mut a, &mut b);
    assert_eq!(a.acked, 10, "the Welcome said so");
    assert!(b.stored.values().all(|(_, n)| *n == 1));
    assert_eq!(b.stored.len(), 10);
}

#[test]
fn a_command_runs_once_and_its_result_is_stored_once_across_reconnects() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    p.run(&mut a, &mut b);
    b.queue_command(&mut p.appliance, cid(1), b"echo hi");
    p.transmit();
    // The command reaches the agent; its ack is lost in a cut.
    p.deliver_down(Flow::Commands);
    p.pump(&mut a, &mut b);
    assert_eq!(a.executions[&cid(1)], 1);
    p.reconnect();
    a.session_down();
    b.session_down();
    p.run(&mut a, &mut b);
    assert_eq!(a.executions[&cid(1)], 1, "redelivered, not re-run");
    assert!(b.commands[&cid(1)].acked);
    a.finish_all(p.clock);
    p.run(&mut a, &mut b);
    let c = &b.commands[&cid(1)];
    assert_eq!(c.result_stores, 1);
    assert_eq!(c.output, b"echo hi done");
    assert_eq!(
        c.result.as_ref().unwrap().outcome,
        CommandOutcome::Exited { code: 0 }
    );
    assert!(a.ledger[&cid(1)].reported);
}

#[test]
fn a_command_running_when_the_agent_crashes_is_reported_interrupted_and_not_rerun() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    p.run(&mut a, &mut b);
    b.queue_command(&mut p.appliance, cid(1), b"sleep");
    p.transmit();
    p.run(&mut a, &mut b);
    a.crash();
    p.reconnect();
    p.run(&mut a, &mut b);
    let c = &b.commands[&cid(1)];
    assert_eq!(
        c.result.as_ref().unwrap().outcome,
        CommandOutcome::Interrupted
    );
    assert_eq!(c.result_stores, 1);
    assert_eq!(a.executions[&cid(1)], 1);
}

#[test]
fn a_stalled_file_flow_does_not_stop_record_acks_or_commands() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    p.run(&mut a, &mut b);
    b.push_file(TransferId([1; 16]), vec![9; 3 * FILE_WINDOW_BYTES as usize]);
    // The agent stops reading its file stream.
    p.stalled.insert(Flow::Files);
    p.run(&mut a, &mut b);
    assert!(
        p.down[flow_index(Flow::Files)].len() > 10,
        "the file flow is full"
    );
    assert_eq!(p.appliance.file_room(), 0);
    for _ in 0..300 {
        a.record();
    }
    b.queue_command(&mut p.appliance, cid(1), b"x");
    p.transmit();
    p.run(&mut a, &mut b);
    assert_eq!(
        a.acked, 300,
        "records acked while the file flow stands still"
    );
    assert_eq!(a.executions[&cid(1)], 1, "commands go on too");
    // The flow resumes and the file arrives whole.
    p.stalled.clear();
    p.run(&mut a, &mut b);
    let f = &a.incoming[&TransferId([1; 16])];
    assert!(f.complete);
    assert_eq!(f.bytes, vec![9; 3 * FILE_WINDOW_BYTES as usize]);
}

#[test]
fn a_pushed_file_resumes_after_a_reconnect_from_what_the_agent_holds() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    p.run(&mut a, &mut b);
    let t = TransferId([2; 16]);
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    b.push_file(t, data.clone());
    p.pump(&mut a, &mut b);
    for _ in 0..10 {
        p.deliver_down(Flow::Files);
    }
    p.pump(&mut a, &mut b);
    let held = a.incoming[&t].bytes.len();
    assert!(held > 0 && held < data.len());
    p.reconnect();
    a.session_down();
    b.session_down();
    p.run(&mut a, &mut b);
    assert_eq!(a.incoming[&t].bytes, data);
    assert!(a.incoming[&t].complete);
}

#[test]
fn an_agent_of_protocol_1_streams_records_and_gets_no_commands() {
    let mut cfg = agent_config();
    cfg.protocol_version = 1;
    let mut p = Pair::new(cfg, appliance_config());
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    for _ in 0..5 {
        a.record();
    }
    b.queue_command(&mut p.appliance, cid(1), b"x");
    p.run(&mut a, &mut b);
    assert_eq!(p.agent.protocol_version(), Some(1));
    assert_eq!(a.acked, 5);
    assert!(a.executions.is_empty());
    assert!(!b.commands[&cid(1)].acked, "stays queued for a newer agent");
    assert!(p.up.iter().all(|q| q.is_empty()));
}

#[test]
fn a_duplicated_welcome_ends_the_session_and_the_next_one_recovers() {
    let mut p = Pair::default_pair();
    let (mut a, mut b) = (MemAgent::new(), MemAppliance::new());
    a.record();
    p.deliver_up(Flow::Records);
    p.pump(&mut a, &mut b);
    p.duplicate(false, Flow::Records);
    p.run(&mut a, &mut b);
    assert!(matches!(p.agent.ended(), Some(Ended::Failed(_))));
    p.reconnect();
    p.run(&mut a, &mut b);
    assert_eq!(a.acked, 1);
}

// ------------------------------------------------- back-pressure (protocol 3)

fn pressure(hint_ms: u32) -> ApplianceFrame {
    ApplianceFrame::Pressure(Pressure {
        queue_delay_ms: 1_000,
        ack_timeout_hint_ms: hint_ms,
    })
}

fn pressure_frames(out: &[(Flow, ApplianceFrame)]) -> Vec<Pressure> {
    out.iter()
        .filter_map(|(flow, f)| match f {
            ApplianceFrame::Pressure(p) => {
                assert_eq!(*flow, Flow::Records, "Pressure goes on the session stream");
                Some(*p)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_slow_but_alive_appliance_keeps_a_protocol_3_agent_connected() {
    let mut a = established_agent(3, 0);
    a.send_records(vec![heartbeat(1)], 0);
    // The appliance says it is slow every second for two minutes; no ack.
    for t in (1_000..120_000).step_by(1_000) {
        a.handle_frame(Flow::Records, pressure(20_000), t);
        a.handle_timeout(t);
        assert!(a.ended().is_none(), "reconnected at {t} ms");
    }
    let evs = agent_events(&mut a);
    assert!(
        evs.iter().all(|e| matches!(
            e,
            AgentEvent::Pressure {
                queue_delay_ms: 1_000,
                patience_ms: 20_000
            }
        )),
        "{evs:?}"
    );
    a.handle_frame(
        Flow::Records,
        ApplianceFrame::Ack(Ack { up_to_seq: 1 }),
        121_000,
    );
    assert_eq!(a.acked(), 1);
    assert!(a.ended().is_none());
}

#[test]
fn a_silent_appliance_is_given_up_after_the_ack_timeout_even_after_pressure() {
    let mut a = established_agent(3, 0);
    a.send_records(vec![heartbeat(1)], 0);
    // Plain silence: the base timeout (10 s).
    assert_eq!(a.poll_timeout(), Some(10_000));
    // A Pressure frame at 2 s asking for 30 s: patience until 32 s.
    a.handle_frame(Flow::Records, pressure(30_000), 2_000);
    assert_eq!(a.poll_timeout(), Some(32_000));
    a.handle_timeout(31_999);
    assert!(a.ended().is_none());
    // Then nothing at all: the appliance is gone.
    a.handle_timeout(32_000);
    assert!(
        failed(&a).starts_with("no acknowledgement for 30.0s"),
        "{}",
        failed(&a)
    );
}

#[test]
fn a_pressure_hint_is_clamped_to_the_agents_maximum() {
    let mut a = established_agent(3, 0);
    a.send_records(vec![heartbeat(1)], 0);
    a.handle_frame(Flow::Records, pressure(u32::MAX), 0);
    assert_eq!(a.poll_timeout(), Some(agent_config().max_ack_timeout_ms));
}

#[test]
fn pressure_to_an_agent_welcomed_with_protocol_2_is_a_violation() {
    let mut a = established_agent(2, 0);
    a.handle_frame(Flow::Records, pressure(20_000), 0);
    assert!(failed(&a).contains("Pressure"), "{}", failed(&a));
}

#[test]
fn pressure_on_another_stream_is_a_violation() {
    let mut a = established_agent(3, 0);
    a.handle_frame(Flow::Commands, pressure(20_000), 0);
    assert!(failed(&a).contains("Pressure"), "{}", failed(&a));
}

#[test]
fn an_agent_offering_3_works_with_an_appliance_that_answers_2() {
    let mut a = AgentSession::new(agent_config(), 0);
    agent_out(&mut a);
    a.handle_frame(Flow::Records, welcome(2, 0, 1 << 20), 0);
    assert_eq!(a.protocol_version(), Some(2));
    assert!(a.has_remote_flows());
    // Protocol 2's rule: silence of ack_timeout ends the session.
    a.send_records(vec![heartbeat(1)], 0);
    assert_eq!(a.poll_timeout(), Some(10_000));
}

#[test]
fn a_protocol_3_appliance_tells_a_stalled_session_it_is_slow() {
    let mut s = established_appliance(3, &[]);
    assert_eq!(s.poll_timeout(), None, "nothing waits");
    s.handle_frame(
        Flow::Records,
        AgentFrame::Records(vec![heartbeat(1), heartbeat(2)]),
        5_000,
    );
    appliance_events(&mut s);
    assert_eq!(s.poll_timeout(), Some(6_000));
    s.handle_timeout(5_500);
    assert!(pressure_frames(&appliance_out(&mut s)).is_empty());
    s.handle_timeout(6_000);
    let p = pressure_frames(&appliance_out(&mut s));
    assert_eq!(
        p,
        vec![Pressure {
            queue_delay_ms: 1_000,
            ack_timeout_hint_ms: 10_000
        }]
    );
    assert_eq!(s.pressure_frames_sent(), 1);
    // Still stalled a second later: again, with the longer delay.
    assert_eq!(s.poll_timeout(), Some(7_000));
    s.handle_timeout(8_000);
    let p = pressure_frames(&appliance_out(&mut s));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].queue_delay_ms, 3_000);
    assert_eq!(p[0].ack_timeout_hint_ms, 12_000);
    // Durable: an ack, and nothing more to say.
    s.records_durable(2);
    let out = appliance_out(&mut s);
    assert!(matches!(
        out[..],
        [(Flow::Records, ApplianceFrame::Ack(Ack { up_to_seq: 2 }))]
    ));
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(60_000);
    assert!(appliance_out(&mut s).is_empty());
}

#[test]
fn a_protocol_2_session_never_gets_pressure() {
    for version in [1, 2] {
        let mut s = established_appliance(version, &[]);
        s.handle_frame(Flow::Records, AgentFrame::Records(vec![heartbeat(1)]), 0);
        appliance_events(&mut s);
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(600_000);
        assert!(appliance_out(&mut s).is_empty());
        assert_eq!(s.pressure_frames_sent(), 0);
    }
}

#[test]
fn a_protocol_2_agent_is_welcomed_with_2_by_a_protocol_3_appliance() {
    let mut s = ApplianceSession::new(appliance_config(), 0);
    s.handle_frame(Flow::Records, hello(2), 0);
    appliance_events(&mut s);
    s.accept(0);
    let out = appliance_out(&mut s);
    let [(Flow::Records, ApplianceFrame::Welcome(w))] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(w.protocol_version, 2);
}
