//! The node daemon: joins the cluster with `net-msg` and serves the control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use net_msg::{ClusterConfig, Node, NodeOptions, Priority, Secret};
use serde_json::{Value, json};

use super::NodeArgs;
use super::control::{self, MAX_LINE, Request};
use pop_migrate::host::Host;

/// Sets up logging to stderr (`RUST_LOG` overrides the default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs `popvmm node` until a `shutdown` control request; returns the error that stopped it.
pub fn run(args: &NodeArgs) -> Result<(), String> {
    init_logging();
    let started = start(args)?;
    serve_control(started);
    Ok(())
}

/// A node on the mesh with its host of VMs and its bound control socket.
pub struct Started {
    /// The VMs of this process.
    pub host: Arc<Host>,
    listener: UnixListener,
    control_path: std::path::PathBuf,
}

/// Joins the cluster and binds the control socket (see [`serve_control`]).
pub fn start(args: &NodeArgs) -> Result<Started, String> {
    let cluster = ClusterConfig::load(&args.cluster).map_err(|e| e.to_string())?;
    let opts = match &args.secret_file {
        Some(f) => {
            let secret = Secret::from_file(f).map_err(|e| e.to_string())?;
            NodeOptions::with_secret(cluster, args.id, secret)
        }
        None => NodeOptions::new(cluster, args.id),
    }
    .map_err(|e| e.to_string())?;
    let control_path = args
        .control
        .clone()
        .unwrap_or_else(|| control::default_path(args.id));
    if let Some(dir) = control_path.parent()
        && !dir.as_os_str().is_empty()
    {
        use std::os::unix::fs::DirBuilderExt;
        // Private to this user: nobody else may reach (or pre-empt) the control socket.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    net_msg::transport::remove_stale_socket(&control_path).map_err(|e| e.to_string())?;
    let listener = UnixListener::bind(&control_path)
        .map_err(|e| format!("control socket {}: {e}", control_path.display()))?;
    std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let host = Host::new();
    let node = match Node::start(opts, crate::router::handler(Arc::downgrade(&host))) {
        Ok(node) => Arc::new(node),
        Err(e) => {
            let _ = std::fs::remove_file(&control_path);
            return Err(e.to_string());
        }
    };
    host.attach(node);
    host.migrations()
        .keep_memory(std::time::Duration::from_secs(args.keep_memory_secs));
    tracing::debug!(node = args.id, "control socket {}", control_path.display());
    Ok(Started {
        host,
        listener,
        control_path,
    })
}

/// Serves the control socket until a `shutdown` request, then leaves the mesh.
pub fn serve_control(started: Started) {
    let Started {
        host,
        listener,
        control_path,
    } = started;
    let _cleanup = RemoveOnDrop(&control_path);
    let node = host.node().clone();
    let stop = Arc::new(AtomicBool::new(false));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (host, stop2) = (host.clone(), stop.clone());
        let path = control_path.clone();
        let _ = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                serve(&host, conn, &stop2);
                if stop2.load(Ordering::SeqCst) {
                    // Wake the accept loop.
                    let _ = UnixStream::connect(&path);
                }
            });
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    drop(listener);
    drop(host);
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown();
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn serve(host: &Arc<Host>, conn: UnixStream, stop: &AtomicBool) {
    let node = host.node();
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn.take(MAX_LINE));
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Ps) => json!({"ok": true, "node": node.id(), "vms": host.cluster_list()}),
            Ok(Request::Threads) => {
                json!({"ok": true, "node": node.id(), "threads": host.cluster_threads()})
            }
            Ok(Request::Cancel { vm }) => match host.cancel_anywhere(&vm) {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            Ok(Request::MigrateThread { vm, tid, to }) => {
                match host.move_thread_anywhere(&vm, tid, to) {
                    Ok(()) => json!({"ok": true}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                }
            }
            Ok(Request::Migrate {
                vm,
                to,
                mode,
                downtime_ms,
            }) => {
                let mut progress = |step: pop_migrate::report::Step| {
                    let mut text = json!({"progress": step.to_json()}).to_string();
                    text.push('\n');
                    let _ = out.write_all(text.as_bytes());
                };
                match host.migrate_anywhere(&vm, to, (mode, downtime_ms), &mut progress) {
                    Ok(summary) => json!({"ok": true, "summary": summary.to_json()}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                }
            }
            Ok(req) => answer(node, req, stop),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut text = answer.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() || stop.load(Ordering::SeqCst) {
            return;
        }
        line.clear();
    }
}

fn answer(node: &Node, req: Request, stop: &AtomicBool) -> Value {
    match req {
        Request::Peers => json!({"ok": true, "node": node.id(), "peers": node.peers()}),
        Request::Stat { reset } => {
            let s = node.stats();
            if reset {
                node.reset_stats();
            }
            json!({
                "ok": true,
                "node": node.id(),
                "mb_per_sec_sent": s.mb_per_sec_sent(),
                "mb_per_sec_received": s.mb_per_sec_received(),
                "stats": s,
            })
        }
        Request::Ping { to, count, size } => {
            let payload = vec![0x5a; size as usize];
            let mut rtts = Vec::new();
            for _ in 0..count {
                let t0 = Instant::now();
                match node.request(
                    to,
                    pop_migrate::msg::MsgType::Ping.number(),
                    Priority::Control,
                    &payload,
                    Duration::from_secs(5),
                ) {
                    Ok(r) if r == payload => rtts.push(t0.elapsed().as_secs_f64() * 1e6),
                    Ok(_) => {
                        return json!({"ok": false, "error": "ping answer differs from the request"});
                    }
                    Err(e) => return json!({"ok": false, "error": e.to_string()}),
                }
            }
            json!({"ok": true, "node": node.id(), "to": to, "size": size, "rtt_us": rtts})
        }
        Request::Stream { to, bytes } => match pop_migrate::probe::stream_to(node, to, bytes) {
            Ok(secs) => {
                json!({"ok": true, "node": node.id(), "to": to, "bytes": bytes, "secs": secs})
            }
            Err(e) => json!({"ok": false, "error": e}),
        },
        Request::Ps
        | Request::Threads
        | Request::Migrate { .. }
        | Request::Cancel { .. }
        | Request::MigrateThread { .. } => {
            json!({"ok": false, "error": "served above"})
        }
        Request::Shutdown => {
            stop.store(true, Ordering::SeqCst);
            json!({"ok": true})
        }
    }
}
