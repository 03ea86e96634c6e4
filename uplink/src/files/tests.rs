use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;

use super::*;

fn t(n: u8) -> TransferId {
    TransferId([n; 16])
}

#[test]
fn a_sender_keeps_at_most_the_window_in_flight_and_acks_open_it_again() {
    let mut f = FileFlow::new(4 * 1000, 1000);
    f.open(t(1), 10_500, 0);
    let mut sent = Vec::new();
    while let Some(c) = f.poll_chunk() {
        sent.push(c);
    }
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert_eq!(f.in_flight(), 4000);
    assert_eq!(f.on_ack(t(1), 2000), Some(false));
    assert_eq!(f.poll_chunk(), Some((t(1), 4000, 1000, false)));
    assert_eq!(f.poll_chunk(), Some((t(1), 5000, 1000, false)));
    assert_eq!(f.poll_chunk(), None);
    // A stale ack changes nothing.
    assert_eq!(f.on_ack(t(1), 1000), Some(false));
    assert_eq!(f.in_flight(), 4000);
    assert_eq!(f.on_ack(t(7), 1), None, "unknown stream");
}

#[test]
fn after_a_reconnect_the_sender_resumes_from_the_acknowledged_offset() {
    let mut f = FileFlow::new(1 << 20, 1000);
    f.open(t(1), 5_500, 0);
    for _ in 0..4 {
        f.poll_chunk().unwrap();
    }
    f.on_ack(t(1), 2000);
    // The link is cut: chunks 2000..4000 are lost with it.
    f.resume();
    assert_eq!(f.poll_chunk(), Some((t(1), 2000, 1000, false)));
    // A receiver that held more than acknowledged says so: skip ahead.
    f.resume();
    f.on_ack(t(1), 3000);
    assert_eq!(f.poll_chunk(), Some((t(1), 3000, 1000, false)));
    assert_eq!(f.poll_chunk(), Some((t(1), 4000, 1000, false)));
    assert_eq!(f.poll_chunk(), Some((t(1), 5000, 500, true)));
    assert_eq!(f.poll_chunk(), None);
    assert_eq!(f.on_ack(t(1), 5500), Some(true), "complete: closed");
    assert!(f.is_empty());
    // Reopening a known stream keeps its position.
    f.open(t(2), 10, 4);
    f.open(t(2), 10, 0);
    assert_eq!(f.get(t(2)).unwrap().acked(), 4);
}

#[test]
fn streams_take_turns_so_one_big_file_does_not_hold_the_others() {
    let mut f = FileFlow::new(1 << 20, 100);
    f.open(t(1), 10_000, 0);
    f.open(t(2), 10_000, 0);
    let order: Vec<TransferId> = (0..4).map(|_| f.poll_chunk().unwrap().0).collect();
    assert_eq!(order, vec![t(1), t(2), t(1), t(2)]);
}

#[test]
fn an_empty_stream_sends_one_empty_last_chunk_and_completes_on_its_ack() {
    let mut f = FileFlow::new(1000, 100);
    f.open(t(1), 0, 0);
    assert_eq!(f.poll_chunk(), Some((t(1), 0, 0, true)));
    assert_eq!(f.poll_chunk(), None);
    assert_eq!(f.on_ack(t(1), 0), Some(true));
}

#[test]
fn a_receiver_writes_new_bytes_only_and_acknowledges_what_is_durable() {
    let mut r = StreamReceiver::new(3000, 0);
    assert_eq!(r.plan(0, 1000), ChunkPlan::Write { skip: 0, at: 0 });
    r.wrote(0, 1000);
    assert_eq!(
        r.plan(500, 1000),
        ChunkPlan::Write {
            skip: 500,
            at: 1000
        }
    );
    assert_eq!(r.plan(0, 1000), ChunkPlan::Duplicate);
    assert_eq!(r.plan(2000, 1000), ChunkPlan::Gap);
    assert_eq!(r.plan(2500, 1000), ChunkPlan::TooLong);
    r.wrote(1000, 2000);
    assert!(r.complete());
}

/// What the model's link may do next.
#[derive(Debug, Clone)]
enum Step {
    /// The writer sends one frame (a chunk if the window allows).
    Send,
    /// The oldest frame in flight (either way) arrives.
    Deliver,
    /// The oldest chunk in flight is delivered twice.
    Duplicate,
    /// The link is cut: everything in flight is lost; on the new link the
    /// receiver acknowledges what it holds and the sender resumes.
    Cut,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Send),
        6 => Just(Step::Deliver),
        1 => Just(Step::Duplicate),
        1 => Just(Step::Cut),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every stream arrives whole and in order whatever the cuts and
    /// duplicates, the window is never exceeded, and the sender never sends
    /// more than the stream per connection.
    #[test]
    fn streams_arrive_whole_through_cuts_and_duplicates_within_the_window(
        sizes in prop::collection::vec(0u64..5_000, 1..4),
        steps in prop::collection::vec(step(), 1..400),
    ) {
        const WINDOW: u64 = 1_200;
        const CHUNK: usize = 500;
        let content = |i: usize, n: u64| -> Vec<u8> {
            (0..n).map(|k| (k as usize * 31 + i * 7) as u8).collect()
        };
        let mut flow = FileFlow::new(WINDOW, CHUNK);
        let mut recv: HashMap<TransferId, (StreamReceiver, Vec<u8>)> = HashMap::new();
        let mut src: HashMap<TransferId, Vec<u8>> = HashMap::new();
        for (i, n) in sizes.iter().enumerate() {
            let id = t(i as u8 + 1);
            flow.open(id, *n, 0);
            src.insert(id, content(i, *n));
            recv.insert(id, (StreamReceiver::new(*n, 0), Vec::new()));
        }
        let mut to_recv: VecDeque<UpFileChunk> = VecDeque::new();
        let mut to_send: VecDeque<UpFileAck> = VecDeque::new();
        let mut completed = 0usize;
        let deliver_chunk = |c: &UpFileChunk,
                                 recv: &mut HashMap<TransferId, (StreamReceiver, Vec<u8>)>|
         -> UpFileAck {
            let (r, buf) = recv.get_mut(&c.transfer).unwrap();
            if let ChunkPlan::Write { skip, at } = r.plan(c.offset, c.bytes.len() as u64) {
                assert_eq!(at as usize, buf.len());
                buf.extend_from_slice(&c.bytes[skip..]);
                r.wrote(c.offset, c.bytes.len() as u64);
            } else {
                assert_ne!(r.plan(c.offset, c.bytes.len() as u64), ChunkPlan::TooLong);
            }
            UpFileAck { transfer: c.transfer, up_to: r.durable }
        };
                let run = |s: Step,
                       flow: &mut FileFlow,
                       recv: &mut HashMap<TransferId, (StreamReceiver, Vec<u8>)>,
                       to_recv: &mut VecDeque<UpFileChunk>,
                       to_send: &mut VecDeque<UpFileAck>,
                       completed: &mut usize| {
            match s {
                Step::Send => {
                    if let Some((id, off, len, last)) = flow.poll_chunk() {
                        let bytes = src[&id][off as usize..off as usize + len].to_vec();
                        to_recv.push_back(UpFileChunk { transfer: id, offset: off, bytes, last });
                    }
                }
                Step::Deliver => {
                    if let Some(c) = to_recv.pop_front() {
                        let a = deliver_chunk(&c, recv);
                        to_send.push_back(a);
                    } else if let Some(a) = to_send.pop_front()
                        && flow.on_ack(a.transfer, a.up_to) == Some(true)
                    {
                        *completed += 1;
                    }
                }
                Step::Duplicate => {
                    if let Some(c) = to_recv.front().cloned() {
                        to_recv.push_front(c);
                    }
                }
                Step::Cut => {
                    to_recv.clear();
                    to_send.clear();
                    flow.resume();
                    for (id, (r, _)) in recv.iter() {
                        if flow.get(*id).is_some() && flow.on_ack(*id, r.durable) == Some(true) {
                            *completed += 1;
                        }
                    }
                }
            }
            assert!(flow.in_flight() <= WINDOW, "window exceeded: {}", flow.in_flight());
        };
        for s in steps.iter().cloned() {
            run(s, &mut flow, &mut recv, &mut to_recv, &mut to_send, &mut completed);
        }
        // Then a quiet link until everything is through.
        let mut guard = 0;
        while !flow.is_empty() {
            guard += 1;
            prop_assert!(guard < 100_000, "no progress");
            run(Step::Send, &mut flow, &mut recv, &mut to_recv, &mut to_send, &mut completed);
            run(Step::Deliver, &mut flow, &mut recv, &mut to_recv, &mut to_send, &mut completed);
        }
        prop_assert_eq!(completed, sizes.len());
        for (id, (r, buf)) in &recv {
            prop_assert!(r.complete());
            prop_assert_eq!(buf, &src[id]);
        }
    }
}
