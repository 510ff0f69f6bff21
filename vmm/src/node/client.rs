//! `popvmm peers`, `popvmm stat` and `popvmm ping`: ask a node, print its answer.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::control::{self, Request};
use super::{PingArgs, StatArgs, Target};

/// Which control socket to use: `--control`, else `--id`'s default, else the only default
/// socket that a live node answers on.
pub fn resolve(t: &Target) -> Result<PathBuf, String> {
    if let Some(p) = &t.control {
        return Ok(p.clone());
    }
    if let Some(id) = t.id {
        return Ok(control::default_path(id));
    }
    let dir = control::default_dir();
    let mut live: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let id = name
                        .strip_prefix("node")?
                        .strip_suffix(".sock")?
                        .parse()
                        .ok()?;
                    let path = e.path();
                    std::os::unix::net::UnixStream::connect(&path).ok()?;
                    Some((id, path))
                })
                .collect()
        })
        .unwrap_or_default();
    live.sort();
    match live.len() {
        0 => Err(format!(
            "no node is running here (no control socket in {}); start one with `popvmm node`",
            dir.display()
        )),
        1 => Ok(live.remove(0).1),
        _ => Err(format!(
            "several nodes run here ({}): choose one with --id",
            live.iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn ask(t: &Target, req: &Request) -> Result<Value, String> {
    control::call(&resolve(t)?, req, Duration::from_secs(60))
}

/// `popvmm peers`: one line per node, `*` on the local one.
pub fn peers(t: &Target) -> Result<String, String> {
    let v = ask(t, &Request::Peers)?;
    if t.json {
        return Ok(format!("{}\n", v["peers"]));
    }
    let mut out = format!(
        "  {:>3}  {:<28} {:<8} {:<6} {:>10}  {}\n",
        "id", "address", "isa", "state", "since (s)", "connects"
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{} {:>3}  {:<28} {:<8} {:<6} {:>10.1}  {}",
            if p["local"] == Value::Bool(true) {
                '*'
            } else {
                ' '
            },
            p["id"].as_u64().unwrap_or(0),
            p["address"].as_str().unwrap_or("?"),
            p["isa"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["since_secs"].as_f64().unwrap_or(0.0),
            p["connects"].as_u64().unwrap_or(0),
        );
    }
    Ok(out)
}

/// `popvmm stat`: bytes and messages per message type, MB/s since the last reset.
pub fn stat(a: &StatArgs) -> Result<String, String> {
    let v = ask(&a.target, &Request::Stat { reset: a.reset })?;
    if a.target.json {
        return Ok(format!("{v}\n"));
    }
    let s = &v["stats"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let mut out = format!(
        "node {}: {:.1} s since start or reset; sent {} messages, {} bytes ({:.3} MB/s); received {} messages, {} bytes ({:.3} MB/s)\n",
        v["node"],
        s["elapsed_secs"].as_f64().unwrap_or(0.0),
        n(&s["total"]["msgs_sent"]),
        n(&s["total"]["bytes_sent"]),
        v["mb_per_sec_sent"].as_f64().unwrap_or(0.0),
        n(&s["total"]["msgs_received"]),
        n(&s["total"]["bytes_received"]),
        v["mb_per_sec_received"].as_f64().unwrap_or(0.0),
    );
    let _ = writeln!(
        out,
        "{:>6} {:>12} {:>14} {:>12} {:>14}",
        "type", "msgs sent", "bytes sent", "msgs recv", "bytes recv"
    );
    for (ty, c) in s["by_type"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{ty:>6} {:>12} {:>14} {:>12} {:>14}",
            n(&c["msgs_sent"]),
            n(&c["bytes_sent"]),
            n(&c["msgs_received"]),
            n(&c["bytes_received"])
        );
    }
    let _ = writeln!(
        out,
        "heartbeats sent {} received {}; handshakes ok {} failed {}; connections closed for bad frames {}; peers lost to missed heartbeats {}",
        n(&s["heartbeats_sent"]),
        n(&s["heartbeats_received"]),
        n(&s["handshakes_ok"]),
        n(&s["handshakes_failed"]),
        n(&s["bad_frames"]),
        n(&s["heartbeat_losses"]),
    );
    if a.reset {
        out.push_str("counters reset\n");
    }
    Ok(out)
}

/// `popvmm ping`: round trips from the node to another node.
pub fn ping(a: &PingArgs) -> Result<String, String> {
    let v = ask(
        &a.target,
        &Request::Ping {
            to: a.to,
            count: a.count,
            size: a.size,
        },
    )?;
    if a.target.json {
        return Ok(format!("{v}\n"));
    }
    let mut rtts: Vec<f64> = v["rtt_us"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    rtts.sort_by(f64::total_cmp);
    let median = rtts.get(rtts.len() / 2).copied().unwrap_or(0.0);
    Ok(format!(
        "node {} -> node {}: {} round trips of {} bytes, min {:.1} µs, median {:.1} µs, max {:.1} µs\n",
        v["node"],
        a.to,
        rtts.len(),
        a.size,
        rtts.first().unwrap_or(&0.0),
        median,
        rtts.last().unwrap_or(&0.0)
    ))
}
