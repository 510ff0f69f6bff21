//! Bad peers: a wrong secret, garbage, truncated and oversized frames, forged tags, a silent
//! peer (heartbeats), and a node that dies and comes back.

mod common;

use std::io::{Read, Write};

use common::*;
use net_msg::frame::{self, FrameMac, Header, Kind, MAX_PAYLOAD, Priority};
use net_msg::handshake::{self, Params};
use net_msg::transport::Stream;
use net_msg::{Error, PeerEvent, PeerState, Secret};

fn echo_works(c: &TestCluster, a: usize, b: usize) {
    // Retried while (re)connecting: a starved test process may lose a peer for a moment.
    let mut last = None;
    let ok = eventually(|| {
        match c
            .node(a)
            .request(b as u32, ECHO, Priority::Page, b"still here", SOON)
        {
            Ok(r) => r == b"still here",
            Err(e @ (Error::NotConnected(_) | Error::PeerLost(_))) => {
                last = Some(e);
                false
            }
            Err(e) => panic!("echo {a} -> {b}: {e}"),
        }
    });
    assert!(ok, "echo {a} -> {b}: {last:?}");
}

/// Connects to node `to` as node `me` and runs the handshake with `secret`.
fn impersonate(
    c: &TestCluster,
    me: u32,
    to: usize,
    secret: &[u8],
) -> Result<(Stream, handshake::Session), handshake::HandshakeError> {
    let mut s = Stream::connect(&c.address(to), SOON).unwrap();
    s.set_timeouts(Some(SOON)).unwrap();
    let secret = Secret::new(secret).unwrap();
    let p = Params {
        secret: &secret,
        local: me,
        nodes: c.config.nodes.len() as u32,
        frame_mac: c.config.frame_mac,
    };
    let session = handshake::initiate(&mut s, &p, to as u32)?;
    Ok((s, session))
}

/// Reads until the node closes the connection; panics if it does not within SOON.
fn closed_by_node(s: &mut Stream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // heartbeats
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
}

#[test]
fn a_node_with_the_wrong_secret_is_refused() {
    for t in BOTH {
        // Node 1 has the wrong secret: it dials node 0 (initiator) and node 2 dials it
        // (responder); both directions must fail, and 0 and 2 still talk.
        let mut c = TestCluster::new(3, t, "");
        c.start(0);
        c.start_with(1, b"not the cluster's secret at all");
        c.start(2);
        assert!(eventually(|| c.node(0).is_up(2) && c.node(2).is_up(0)));
        assert!(eventually(
            || c.node(0).stats().handshakes_failed >= 1 && c.node(2).stats().handshakes_failed >= 1
        ));
        assert!(eventually(|| c.node(1).stats().handshakes_failed >= 2));
        for (a, b) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
            assert!(!c.node(a).is_up(b), "{t:?}: {a} sees {b} up");
            assert!(matches!(
                c.node(a).send(b, 1, Priority::Control, b"x"),
                Err(Error::NotConnected(_))
            ));
        }
        echo_works(&c, 0, 2);
        // Bulk streams run the same handshake.
        c.node(0)
            .serve_streams(|_| panic!("a stream from a node without the secret"));
        let e = c.node(1).open_stream(0, 9).unwrap_err();
        assert!(
            matches!(e, Error::Handshake(handshake::HandshakeError::BadMac)),
            "{e}"
        );
        let e = impersonate(&c, 1, 0, b"another wrong secret!!").unwrap_err();
        assert!(matches!(e, handshake::HandshakeError::BadMac), "{e}");
    }
}

#[test]
fn garbage_truncated_oversized_and_forged_frames_close_only_that_connection() {
    for t in BOTH {
        // A 4-node cluster with nodes 0..=2 running: the test plays node 3.
        let mut c = TestCluster::new(4, t, "");
        for id in 0..3 {
            c.start(id);
        }
        assert!(eventually(|| c.node(0).is_up(1) && c.node(0).is_up(2)));

        // Garbage instead of a handshake.
        let mut s = Stream::connect(&c.address(0), SOON).unwrap();
        s.set_timeouts(Some(SOON)).unwrap();
        let garbage: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = s.write_all(&garbage);
        closed_by_node(&mut s);
        assert!(eventually(|| c.node(0).stats().handshakes_failed == 1));
        echo_works(&c, 0, 1);

        let header = |len: u32| Header {
            kind: Kind::OneWay,
            priority: Priority::Page,
            msg_type: 5,
            len,
            correlation: 0,
        };
        type MakeBytes<'a> = Box<dyn Fn(&mut Option<FrameMac>) -> Vec<u8> + 'a>;
        let cases: Vec<(&str, MakeBytes)> = vec![
            ("garbage after the handshake", Box::new(|_| garbage.clone())),
            (
                "a truncated frame",
                Box::new(|mac| {
                    let mut b = Vec::new();
                    frame::encode_frame(&mut b, &header(1000), &[7; 1000], mac.as_mut());
                    b.truncate(600);
                    b
                }),
            ),
            (
                "an oversized length",
                Box::new(|_| header(MAX_PAYLOAD as u32 + 1).encode().to_vec()),
            ),
            (
                "a length of 4 GiB",
                Box::new(|_| {
                    let mut h = header(0).encode();
                    h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                    h.to_vec()
                }),
            ),
            (
                "a forged tag",
                Box::new(|_| {
                    let mut b = Vec::new();
                    frame::encode_frame(
                        &mut b,
                        &header(10),
                        &[1; 10],
                        Some(&mut FrameMac::new([9; 32])),
                    );
                    b
                }),
            ),
        ];
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let (mut s, mut session) = impersonate(&c, 3, 0, SECRET).unwrap();
            assert!(
                eventually(|| c.node(0).is_up(3)),
                "{t:?}: {what}: node 3 never up"
            );
            // One good frame first: the connection really works.
            let mut good = Vec::new();
            frame::encode_frame(&mut good, &header(3), b"ok!", session.send_mac.as_mut());
            s.write_all(&good).unwrap();
            let got = c.inbox[0].as_ref().unwrap().recv_timeout(SOON).unwrap();
            assert_eq!((got.from, got.payload.as_slice()), (3, &b"ok!"[..]));
            let _ = s.write_all(&bytes(&mut session.send_mac));
            if *what == "a truncated frame" {
                s.shutdown();
            } else {
                closed_by_node(&mut s);
            }
            assert!(
                eventually(|| !c.node(0).is_up(3)),
                "{t:?}: {what}: still up"
            );
            assert!(
                eventually(|| c.node(0).stats().bad_frames == i as u64 + 1),
                "{t:?}: {what}: not counted"
            );
            echo_works(&c, 0, 1);
            echo_works(&c, 2, 0);
        }
    }
}

#[test]
fn a_silent_peer_is_declared_lost_after_missed_heartbeats() {
    for t in BOTH {
        let mut c = TestCluster::new(4, t, "heartbeat_ms = 100");
        for id in 0..3 {
            c.start(id);
        }
        assert!(eventually(|| c.node(0).is_up(1) && c.node(0).is_up(2)));
        let events = c.node(0).subscribe();
        let (mut s, _session) = impersonate(&c, 3, 0, SECRET).unwrap();
        while events.recv_timeout(SOON).unwrap() != PeerEvent::Up(3) {}
        let started = std::time::Instant::now();
        // Node 3 (this test) now says nothing; node 0 must give up on it after a few periods.
        loop {
            match events.recv_timeout(SOON).unwrap() {
                PeerEvent::Down(3) => break,
                _ => continue,
            }
        }
        eprintln!(
            "{t:?}: silent peer declared lost after {:?} (heartbeat 100 ms, 3 misses)",
            started.elapsed()
        );
        assert!(c.node(0).stats().heartbeat_losses >= 1);
        assert!(c.node(0).stats().heartbeats_received > 0);
        // It sent us heartbeats meanwhile, then closed the connection.
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.len() >= frame::HEADER_LEN);
        echo_works(&c, 0, 1);
    }
}

#[test]
fn a_dead_node_fails_requests_in_flight_and_is_reconnected_when_it_returns() {
    for t in BOTH {
        let mut c = TestCluster::start_all(3, t);
        let events = c.node(0).subscribe();
        // A request node 2 never answers, in flight when node 2 dies.
        let pending = c
            .node(0)
            .start_request(2, BLACK_HOLE, Priority::Control, b"?")
            .unwrap();
        c.stop(2);
        let e = pending.wait(SOON).unwrap_err();
        assert!(matches!(e, Error::PeerLost(2)), "{t:?}: {e}");
        while events.recv_timeout(SOON).unwrap() != PeerEvent::Down(2) {}
        assert!(eventually(|| !c.node(1).is_up(2)));
        assert!(matches!(
            c.node(0).request(2, ECHO, Priority::Control, b"", SOON),
            Err(Error::NotConnected(2))
        ));
        assert_eq!(c.node(0).peers()[2].state, PeerState::Down);
        // Node 2 comes back on the same address.
        c.start(2);
        while events.recv_timeout(SOON).unwrap() != PeerEvent::Up(2) {}
        assert!(c.node(2).wait_all_up(SOON));
        assert!(eventually(|| c.node(1).is_up(2)));
        assert_eq!(c.node(0).peers()[2].connects, 2);
        echo_works(&c, 0, 2);
        echo_works(&c, 2, 1);
        // And node 0 (which nobody dials) too: the others dial it again.
        c.stop(0);
        assert!(eventually(|| !c.node(1).is_up(0) && !c.node(2).is_up(0)));
        c.start(0);
        assert!(c.node(0).wait_all_up(SOON));
        assert!(c.node(1).wait_all_up(SOON));
        echo_works(&c, 1, 0);
    }
}

#[test]
fn frame_tags_can_be_turned_off_but_both_sides_must_agree() {
    for t in BOTH {
        let c = TestCluster::start_all_with(3, t, "frame_mac = false");
        echo_works(&c, 0, 2);
        let s = c.node(2).stats();
        assert_eq!(
            s.by_type[&ECHO].bytes_received,
            frame::wire_len(10, false) as u64
        );
        // A node with tags on is refused by nodes with tags off, with a clear reason.
        let mut s = Stream::connect(&c.address(0), SOON).unwrap();
        s.set_timeouts(Some(SOON)).unwrap();
        let secret = Secret::new(SECRET).unwrap();
        let p = Params {
            secret: &secret,
            local: 2,
            nodes: 3,
            frame_mac: true,
        };
        let e = handshake::initiate(&mut s, &p, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refused by the peer: cluster settings differ",
            "{t:?}"
        );
    }
}

#[test]
fn a_peer_of_another_protocol_version_is_told_and_refused() {
    for t in BOTH {
        let c = TestCluster::start_all(3, t);
        let mut s = Stream::connect(&c.address(0), SOON).unwrap();
        s.set_timeouts(Some(SOON)).unwrap();
        // A hello as a future version would start it: magic, then the version.
        let mut hello = handshake::MAGIC.to_vec();
        hello.push(frame::PROTOCOL_VERSION + 1);
        hello.extend([0u8; 47]);
        s.write_all(&hello).unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..8], handshake::MAGIC);
        assert_eq!(
            reply[8],
            frame::PROTOCOL_VERSION,
            "{t:?}: the node states its version"
        );
        assert_eq!(reply[9], 1, "{t:?}: status 'other protocol version'");
        closed_by_node(&mut s);
        assert!(eventually(|| c.node(0).stats().handshakes_failed == 1));
        echo_works(&c, 0, 1);
    }
}

#[test]
fn a_node_that_starts_wakes_the_nodes_that_dial_it_and_only_with_the_secret() {
    for t in BOTH {
        // A long heartbeat: the others' back-off, once node 0 is gone, is two seconds.
        let mut c = TestCluster::start_all_with(3, t, "heartbeat_ms = 8000\n");
        assert!(c.node(0).wait_all_up(SOON));
        let woken = |c: &TestCluster, id: usize| c.node(id).stats().wake_ups;
        // The start's own wake-ups, which may still be on their way: node 1 by node 0,
        // node 2 by nodes 0 and 1.
        assert!(eventually(|| [woken(&c, 1), woken(&c, 2)] == [1, 2]));
        let before = [1, 2];
        c.stop(0);
        assert!(eventually(|| !c.node(1).is_up(0) && !c.node(2).is_up(0)));
        // Restarted without the secret: its wake-ups are refused and count for nothing.
        c.start_with(0, b"not the cluster's secret at all");
        assert!(eventually(|| c.node(1).stats().handshakes_failed > 0));
        assert_eq!([woken(&c, 1), woken(&c, 2)], before);
        c.stop(0);
        // With it: both are woken, and dial it.
        c.start(0);
        assert!(c.node(0).wait_all_up(SOON));
        assert!(eventually(
            || woken(&c, 1) > before[0] && woken(&c, 2) > before[1]
        ));
        echo_works(&c, 1, 0);
        echo_works(&c, 0, 2);
    }
}

#[test]
fn a_starting_node_settles_once_each_peer_is_up_or_refuses() {
    for t in BOTH {
        // Node 2 is down; 1 runs. Node 3 starts, dialing 0, 1 and 2: it settles with 0 and
        // 1 up and 2 down, without waiting for 2 (a wait would end in a time-out: false).
        let mut c = TestCluster::new(4, t, "");
        c.close(2);
        c.start(0);
        c.start(1);
        assert!(eventually(|| c.node(1).is_up(0)));
        c.start(3);
        assert!(c.node(3).wait_settled(SOON));
        let up = |c: &TestCluster, id: usize| {
            [0u32, 1, 2, 3].map(|p| p as usize == id || c.node(id).is_up(p))
        };
        assert_eq!(up(&c, 3), [true, true, false, true]);
        // Node 0 starts again: it wakes 1, 2 and 3; 2 refuses, the others dial it.
        c.stop(0);
        c.start(0);
        assert!(c.node(0).wait_settled(SOON));
        assert_eq!(up(&c, 0), [true, true, false, true]);
    }
}
