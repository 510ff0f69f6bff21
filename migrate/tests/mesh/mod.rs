//! A mesh of net-msg nodes in this process over loopback TCP (ports from binding port 0),
//! each routing `PAGE` messages to its own [`Regions`] and echoing `PING` requests: the DSM
//! on the real messaging layer, with no VM (host threads stand in for vCPUs).

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use net_msg::transport::Listener;
use net_msg::{Address, ClusterConfig, Incoming, Node, NodeOptions, Secret};
use pop_migrate::dsm::Regions;
use pop_migrate::msg::MsgType;

/// The cluster's secret.
pub const SECRET: &[u8] = b"dsm mesh secret, 0123456789abcdef";

/// `n` nodes, all connected to each other.
pub struct Mesh {
    /// The nodes, by id.
    pub nodes: Vec<Arc<Node>>,
    /// Each node's regions.
    pub regions: Vec<Arc<Regions>>,
}

/// Starts `n` nodes and waits until each sees every other.
pub fn mesh(n: usize) -> Mesh {
    mesh_with(n, true)
}

/// [`mesh`], its nodes taking the page streams their peers open, or (`streams` false)
/// refusing them, as a node without that service would.
pub fn mesh_with(n: usize, streams: bool) -> Mesh {
    let mut text = String::from("heartbeat_ms = 250\nheartbeat_misses = 8\n");
    let mut listeners = Vec::new();
    for id in 0..n {
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let a = l.local_address().unwrap();
        text += &format!("[[node]]\nid = {id}\naddress = \"{a}\"\nisa = \"x86_64\"\n");
        listeners.push(l);
    }
    let config = ClusterConfig::parse(&text, Path::new(".")).unwrap();
    let mut nodes = Vec::new();
    let mut regions = Vec::new();
    for (id, l) in listeners.into_iter().enumerate() {
        let opts =
            NodeOptions::with_secret(config.clone(), id as u32, Secret::new(SECRET).unwrap())
                .unwrap();
        let mine = Arc::new(Regions::default());
        let routed = mine.clone();
        let handler = move |mut m: Incoming| {
            if m.msg_type == MsgType::Ping.number() {
                let p = std::mem::take(&mut m.payload);
                let _ = m.respond(&p);
            } else if m.msg_type == MsgType::Page.number()
                && let Err(e) = routed.deliver(m.from, &m.payload)
            {
                eprintln!("node {id}: {e}");
            }
        };
        let node = Arc::new(Node::start_on(opts, l, handler).unwrap());
        let served = mine.clone();
        if streams {
            node.serve_streams(move |s| {
                if s.kind() == pop_migrate::dsm::STREAM_KIND {
                    served.accept_stream(s);
                }
            });
        }
        nodes.push(node);
        regions.push(mine);
    }
    for n in &nodes {
        assert!(
            n.wait_all_up(Duration::from_secs(20)),
            "the mesh did not come up"
        );
    }
    Mesh { nodes, regions }
}
