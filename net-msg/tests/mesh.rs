//! Clusters of 3+ nodes in one process, over loopback TCP and Unix sockets: delivery, order,
//! stats, requests, and the peer list.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use net_msg::frame::wire_len;
use net_msg::{Error, PeerState, Priority};

const SIZES: [usize; 4] = [8, 64, 4096, 70_000];

fn payload(from: usize, seq: u64) -> Vec<u8> {
    let len = SIZES[(seq % 4) as usize];
    let mut p: Vec<u8> = (0..len)
        .map(|i| (from * 31 + seq as usize * 7 + i) as u8)
        .collect();
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

fn class(seq: u64) -> Priority {
    Priority::ALL[(seq * 7 % 3) as usize]
}

#[test]
fn messages_arrive_intact_in_order_per_class_and_stats_match() {
    for t in BOTH {
        const N: usize = 3;
        const PER_PEER: u64 = 120;
        let c = TestCluster::start_all(N, t);
        for id in 0..N {
            c.node(id).reset_stats();
        }
        // Every node sends to every other, from one thread per node, all at once.
        std::thread::scope(|s| {
            for from in 0..N {
                let node = c.node(from);
                s.spawn(move || {
                    for seq in 0..PER_PEER {
                        for to in (0..N).filter(|&to| to != from) {
                            let p = class(seq);
                            node.send(to as u32, 10 + p as u16, p, &payload(from, seq))
                                .unwrap();
                        }
                    }
                });
            }
        });
        for to in 0..N {
            let inbox = c.inbox[to].as_ref().unwrap();
            let mut next: HashMap<(u32, Priority), u64> = HashMap::new();
            for _ in 0..PER_PEER * (N as u64 - 1) {
                let m = inbox.recv_timeout(SOON).expect("message lost");
                assert_eq!(m.msg_type, 10 + m.priority as u16);
                let seq = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                assert_eq!(class(seq), m.priority, "{t:?}: class of message {seq}");
                assert_eq!(
                    m.payload,
                    payload(m.from as usize, seq),
                    "{t:?}: message {seq} from {}",
                    m.from
                );
                let expected = next.entry((m.from, m.priority)).or_insert(0);
                while class(*expected) != m.priority {
                    *expected += 1;
                }
                assert_eq!(
                    seq, *expected,
                    "{t:?}: order within class {:?} from node {}",
                    m.priority, m.from
                );
                *expected += 1;
            }
        }
        // Stats: per type, what each node sent to N-1 peers, and received from N-1 peers.
        let mut per_type: HashMap<u16, (u64, u64)> = HashMap::new();
        for seq in 0..PER_PEER {
            let e = per_type.entry(10 + class(seq) as u16).or_default();
            e.0 += N as u64 - 1;
            e.1 += (N as u64 - 1) * wire_len(SIZES[(seq % 4) as usize], true) as u64;
        }
        for id in 0..N {
            let s = c.node(id).stats();
            for (ty, &(msgs, bytes)) in &per_type {
                let got = s.by_type[ty];
                assert_eq!(
                    (got.msgs_sent, got.bytes_sent),
                    (msgs, bytes),
                    "{t:?}: node {id} sent, type {ty}"
                );
                assert_eq!(
                    (got.msgs_received, got.bytes_received),
                    (msgs, bytes),
                    "{t:?}: node {id} received, type {ty}"
                );
            }
            assert_eq!(s.total.msgs_sent, PER_PEER * (N as u64 - 1));
            assert!(s.elapsed_secs > 0.0);
            c.node(id).reset_stats();
            assert_eq!(c.node(id).stats().total.msgs_sent, 0);
        }
    }
}

#[test]
fn requests_from_many_threads_get_their_own_responses() {
    for t in BOTH {
        let c = TestCluster::start_all(4, t);
        std::thread::scope(|s| {
            for from in 0..4usize {
                for thread in 0..3usize {
                    let node = c.node(from);
                    s.spawn(move || {
                        for i in 0..50usize {
                            let to = ((from + 1 + i % 3) % 4) as u32;
                            let p: Vec<u8> = format!("{from}/{thread}/{i}")
                                .into_bytes()
                                .repeat(1 + i % 60);
                            let prio = Priority::ALL[i % 3];
                            let r = node.request(to, ECHO, prio, &p, SOON).unwrap();
                            assert_eq!(r, p);
                        }
                    });
                }
            }
        });
        let s = c.node(0).stats();
        // 150 requests sent and 150 answered by node 0, each a message of type ECHO each way.
        assert_eq!(s.by_type[&ECHO].msgs_sent, 300, "{t:?}");
        assert_eq!(s.by_type[&ECHO].msgs_received, 300, "{t:?}");
        // A request the peer answers with an error, and one to no peer.
        let e = c
            .node(0)
            .request(1, 7, Priority::Control, b"?", SOON)
            .unwrap_err();
        assert!(matches!(e, Error::Remote { node: 1, .. }), "{e}");
        assert!(matches!(
            c.node(0).send(0, 1, Priority::Control, b""),
            Err(Error::NoSuchPeer(0))
        ));
        assert!(matches!(
            c.node(0).send(9, 1, Priority::Control, b""),
            Err(Error::NoSuchPeer(9))
        ));
        let big = vec![0u8; net_msg::frame::MAX_PAYLOAD + 1];
        assert!(matches!(
            c.node(0).send(1, 1, Priority::Bulk, &big),
            Err(Error::TooLarge(_))
        ));
    }
}

#[test]
fn peers_lists_every_node_and_marks_the_local_one() {
    for t in BOTH {
        let c = TestCluster::start_all(3, t);
        for id in 0..3 {
            let peers = c.node(id).peers();
            assert_eq!(peers.len(), 3);
            for p in &peers {
                assert_eq!(p.local, p.id == id as u32);
                assert_eq!(
                    p.state,
                    if p.local {
                        PeerState::Local
                    } else {
                        PeerState::Up
                    },
                    "{t:?}: {p:?}"
                );
                assert_eq!(p.address, c.address(p.id as usize).to_string());
                assert_eq!(p.isa, "x86_64");
            }
        }
    }
}

#[test]
fn control_frames_overtake_queued_bulk_frames() {
    for t in BOTH {
        // Heartbeats of 1 s: node 1's reader stalls for 0.3 s below, which a handler must
        // never do for heartbeat periods.
        let c = TestCluster::start_all_with(3, t, "heartbeat_ms = 1000");
        let inbox = c.inbox[1].as_ref().unwrap();
        // Node 1's handler stalls, so node 0's socket fills and its bulk queue backs up.
        let paused = c.pause[1].lock().unwrap();
        std::thread::scope(|s| {
            let n0 = c.node(0);
            let bulk = s.spawn(move || {
                for i in 0..200u64 {
                    let mut p = vec![0u8; 256 * 1024];
                    p[..8].copy_from_slice(&i.to_le_bytes());
                    n0.send(1, 30, Priority::Bulk, &p).unwrap();
                }
            });
            std::thread::sleep(Duration::from_millis(300));
            c.node(0).send(1, 31, Priority::Control, b"urgent").unwrap();
            drop(paused);
            let mut bulk_after_control = 0;
            let mut seen_control = false;
            for _ in 0..201 {
                let m = inbox.recv_timeout(SOON).unwrap();
                if m.priority == Priority::Control {
                    seen_control = true;
                    assert_eq!(m.payload, b"urgent");
                } else if seen_control {
                    bulk_after_control += 1;
                }
            }
            assert!(seen_control);
            assert!(
                bulk_after_control > 0,
                "{t:?}: the control message waited behind every bulk message"
            );
            eprintln!(
                "{t:?}: {bulk_after_control} of 200 bulk messages arrived after the control message"
            );
            bulk.join().unwrap();
        });
    }
}

#[test]
fn bulk_streams_carry_records_both_ways_beside_the_mesh() {
    for t in BOTH {
        let c = TestCluster::start_all(3, t);
        assert!(c.node(0).wait_all_up(Duration::from_secs(5)));
        // Node 2 opens nothing yet: node 0 accepts streams only once it serves them.
        let refused = c.node(1).open_stream(0, 9).unwrap_err();
        assert!(matches!(refused, Error::Handshake(_)), "{t:?}: {refused}");
        assert!(matches!(c.node(1).open_stream(0, 0), Err(Error::Misuse(_))));
        assert!(matches!(
            c.node(1).open_stream(1, 9),
            Err(Error::NoSuchPeer(1))
        ));
        // An echo server that answers each record with its body reversed; any node, lower
        // or higher id, may open a stream (unlike the mesh connection, dialled by the higher).
        c.node(0).serve_streams(|mut s| {
            let (peer, kind) = (s.peer(), s.kind());
            while let Some((head, mut body)) = s.recv().unwrap() {
                body.reverse();
                let mut h = head.clone();
                h.extend_from_slice(&[peer as u8, kind as u8]);
                s.send(&h, &body).unwrap();
            }
        });
        for from in [1, 2] {
            let mut s = c.node(from).open_stream(0, 9).unwrap();
            assert_eq!((s.peer(), s.kind()), (0, 9));
            for len in [0usize, 1, 4096, 300_000] {
                let body: Vec<u8> = (0..len).map(|i| (i * 13 + from) as u8).collect();
                s.send(b"hi", &body).unwrap();
                let (head, back) = s.recv().unwrap().unwrap();
                assert_eq!(head, [b'h', b'i', from as u8, 9]);
                assert_eq!(back, body.iter().rev().copied().collect::<Vec<_>>());
            }
            // Memory sent by raw ranges (as a running guest's is), in pieces of every size
            // around the stream's chunk.
            let memory: Vec<u8> = (0..1_000_000usize).map(|i| (i * 7 + from) as u8).collect();
            for cuts in [
                vec![0..0, 7..7],
                vec![0..1, 1..4096],
                vec![0..net_msg::stream::SEND_CHUNK + 1, 500_000..1_000_000],
                vec![10..20, 20..262_144, 300_000..300_001, 0..0],
            ] {
                // SAFETY: `memory` outlives the send.
                let parts: Vec<net_msg::SharedBytes<'_>> = cuts
                    .iter()
                    .map(|r| unsafe {
                        net_msg::SharedBytes::new(memory[r.clone()].as_ptr(), r.len())
                    })
                    .collect();
                s.send_shared(b"sh", &parts).unwrap();
                let sent: Vec<u8> = cuts
                    .iter()
                    .flat_map(|r| memory[r.clone()].to_vec())
                    .collect();
                let (_, back) = s.recv().unwrap().unwrap();
                assert_eq!(back, sent.iter().rev().copied().collect::<Vec<_>>());
            }
        }
        // The mesh is undisturbed.
        assert!(c.node(1).is_up(0) && c.node(2).is_up(0));
    }
}
