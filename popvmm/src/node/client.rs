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
        "heartbeats sent {} received {}; handshakes ok {} failed {}; connections closed for bad frames {}; peers lost to missed heartbeats {}; wake-ups {}",
        n(&s["heartbeats_sent"]),
        n(&s["heartbeats_received"]),
        n(&s["handshakes_ok"]),
        n(&s["handshakes_failed"]),
        n(&s["bad_frames"]),
        n(&s["heartbeat_losses"]),
        n(&s["wake_ups"]),
    );
    if a.reset {
        out.push_str("counters reset\n");
    }
    Ok(out)
}

/// `popvmm ping`: round trips from the node to another node.
pub fn ping(a: &PingArgs) -> Result<String, String> {
    if let Some(mib) = a.stream {
        let v = ask(
            &a.target,
            &Request::Stream {
                to: a.to,
                bytes: mib << 20,
            },
        )?;
        if a.target.json {
            return Ok(format!("{v}\n"));
        }
        let secs = v["secs"].as_f64().unwrap_or(0.0);
        return Ok(format!(
            "node {} -> node {}: streamed {mib} MiB in {secs:.3} s ({:.0} MB/s), into fresh memory there\n",
            v["node"],
            a.to,
            (mib << 20) as f64 / 1e6 / secs.max(1e-9)
        ));
    }
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
    let at = |p: f64| {
        let last = rtts.len().saturating_sub(1) as f64;
        rtts.get((last * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(format!(
        "node {} -> node {}: {} round trips of {} bytes, min {:.1} µs, median {:.1} µs, p99 {:.1} µs, max {:.1} µs\n",
        v["node"],
        a.to,
        rtts.len(),
        a.size,
        at(0.0),
        at(0.5),
        at(0.99),
        at(1.0)
    ))
}

/// A VM's name as `ps` shows it: the image's file name.
fn short_name(name: &Value) -> &str {
    let name = name.as_str().unwrap_or("?");
    std::path::Path::new(name)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(name)
}

/// `popvmm ps --threads`: every thread of the cluster's VMs.
fn ps_threads(t: &Target) -> Result<String, String> {
    let v = ask(t, &Request::Threads)?;
    if t.json {
        return Ok(format!("{}\n", v["threads"]));
    }
    let mut out = format!(
        "{:<18} {:<20} {:>6} {:>4}  {}\n",
        "vm", "name", "tid", "node", "state"
    );
    for th in v["threads"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<18} {:<20} {:>6} {:>4}  {}",
            format!("{:#x}", th["vm"].as_u64().unwrap_or(0)),
            short_name(&th["name"]),
            th["tid"].as_u64().unwrap_or(0),
            th["node"].as_u64().unwrap_or(0),
            th["state"].as_str().unwrap_or("?"),
        );
    }
    Ok(out)
}

/// `popvmm migrate VM --thread TID --to NODE`.
fn migrate_thread(a: &crate::cli::MigrateArgs, tid: u32, to: u32) -> Result<String, String> {
    let req = Request::MigrateThread {
        vm: a.vm.clone(),
        tid,
        to,
    };
    let path = resolve(&a.target)?;
    control::call(&path, &req, std::time::Duration::from_secs(60))?;
    if a.target.json {
        return Ok(format!(
            "{}\n",
            serde_json::json!({"status": "completed", "vm": a.vm, "thread": tid, "to": to})
        ));
    }
    Ok(format!("moved thread {tid} of VM {} to node {to}\n", a.vm))
}

/// `popvmm migrate --cancel VM`: stops the VM's migration under way.
fn cancel(a: &crate::cli::MigrateArgs) -> Result<String, String> {
    let path = resolve(&a.target)?;
    let req = Request::Cancel { vm: a.vm.clone() };
    control::call(&path, &req, std::time::Duration::from_secs(10))?;
    if a.target.json {
        return Ok(format!(
            "{}\n",
            serde_json::json!({"status": "cancelling", "vm": a.vm})
        ));
    }
    Ok(format!(
        "the migration of VM {} stops before its switch-over; the VM runs on where it was\n",
        a.vm
    ))
}

/// `popvmm ps`: the VMs of the cluster, as the node asked sees them (or, with `--threads`,
/// their threads).
pub fn ps(a: &crate::cli::PsArgs) -> Result<String, String> {
    let t = &a.target;
    if a.threads {
        return ps_threads(t);
    }
    let v = ask(t, &Request::Ps)?;
    if t.json {
        return Ok(format!("{}\n", v["vms"]));
    }
    let mut out = format!(
        "{:<18} {:<20} {:>4} {:>4} {:>7} {:>9}  {}\n",
        "id", "name", "node", "home", "threads", "memory", "state"
    );
    for vm in v["vms"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<18} {:<20} {:>4} {:>4} {:>7} {:>8}M  {}",
            format!("{:#x}", vm["id"].as_u64().unwrap_or(0)),
            short_name(&vm["name"]),
            vm["node"].as_u64().unwrap_or(0),
            vm["home"].as_u64().unwrap_or(0),
            vm["threads"].as_u64().unwrap_or(0),
            vm["memory"].as_u64().unwrap_or(0) >> 20,
            vm["state"].as_str().unwrap_or("?"),
        );
    }
    Ok(out)
}

/// `popvmm migrate`: asks a node (which relays the request if the VM runs elsewhere) to
/// move the VM, and prints its progress and a summary.
pub fn migrate(a: &crate::cli::MigrateArgs) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    if a.cancel {
        return cancel(a);
    }
    let to = a.to.ok_or("--to NODE is needed")?;
    if let Some(tid) = a.thread {
        return migrate_thread(a, tid, to);
    }
    let path = resolve(&a.target)?;
    let req = Request::Migrate {
        vm: a.vm.clone(),
        to,
        mode: a.mode,
        downtime_ms: a.downtime_ms,
    };
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("no node answers on {}: {e}", path.display()))?;
    let mut line = serde_json::to_string(&req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.take(control::MAX_LINE));
    let mut stdout = std::io::stdout();
    // Bytes of the rounds so far (the node reports each round's).
    let mut sent = 0u64;
    loop {
        let mut answer = String::new();
        match r.read_line(&mut answer) {
            Ok(0) => {
                return Err(
                    "the node closed the connection before answering (it stopped, or it was \
                     the VM's launch and the VM ended)"
                        .into(),
                );
            }
            Ok(_) => {}
            Err(e) => return Err(format!("reading the node's answer: {e}")),
        }
        let v: Value =
            serde_json::from_str(&answer).map_err(|e| format!("bad answer from the node: {e}"))?;
        if a.target.json {
            let event = query_migrate::event(&v, &a.vm, &mut sent);
            if event["status"] == "failed" || event["status"] == "completed" {
                let line = format!("{event}\n");
                return match event["status"] == "completed" {
                    true => Ok(line),
                    false => {
                        let _ = stdout.write_all(line.as_bytes());
                        Err(event["error-desc"].as_str().unwrap_or("failed").to_string())
                    }
                };
            }
            let _ = writeln!(stdout, "{event}");
            continue;
        }
        if let Some(p) = v.get("progress")
            && p["phase"] == "push"
        {
            let _ = writeln!(
                stdout,
                "pushed {} of {} pages ({:.1} MB at {:.0} MB/s); the source must live until all are pushed",
                p["pushed_pages"],
                p["total_pages"],
                p["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                p["mb_per_sec"].as_f64().unwrap_or(0.0),
            );
            continue;
        }
        if let Some(p) = v.get("progress")
            && p.get("phase").is_some()
        {
            let _ = writeln!(
                stdout,
                "switched over after {:.2} ms ({:.1} MB): the VM runs on node {}; pushing the rest of its memory",
                p["downtime_ms"].as_f64().unwrap_or(0.0),
                p["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                p["to"],
            );
            continue;
        }
        if let Some(p) = v.get("progress") {
            let _ = writeln!(
                stdout,
                "round {}: {} pages, {:.1} MB at {:.0} MB/s; {} pages dirty, estimated downtime {:.2} ms",
                p["round"],
                p["pages"],
                p["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                p["mb_per_sec"].as_f64().unwrap_or(0.0),
                p["remaining_pages"],
                p["estimated_downtime_ms"].as_f64().unwrap_or(0.0),
            );
            continue;
        }
        if v["ok"] != Value::Bool(true) {
            return Err(v["error"]
                .as_str()
                .unwrap_or("the migration failed")
                .to_string());
        }
        let s = &v["summary"];
        return Ok(format!(
            "migrated VM {} from node {} to node {} ({}): {:.1} ms in all, downtime {:.2} ms, {:.1} MB sent in {} rounds{}\n",
            a.vm,
            s["from"],
            s["to"],
            s["mode"].as_str().unwrap_or("?"),
            s["total_ms"].as_f64().unwrap_or(0.0),
            s["downtime_ms"].as_f64().unwrap_or(0.0),
            s["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            s["rounds"],
            match (s["reused_memory"] == true, s["had_image"] == true) {
                (true, true) => "; the destination had the image and reused memory a VM left there",
                (true, false) => "; the destination reused memory a VM left there",
                (false, true) => "; the destination had the image",
                (false, false) => "",
            },
        ));
    }
}

/// `popvmm migrate --json`: the node's progress and answers in the words of QEMU's
/// `query-migrate` (`status`, `total-time` and `downtime` in ms, `ram.transferred` in bytes,
/// `ram.mbps` in megabits per second, `ram.dirty-sync-count`: rounds, ...), plus this
/// system's own (`round`, `from`, `to`, `mode`, `phases`).
mod query_migrate {
    use serde_json::{Value, json};

    const PAGE: u64 = 4096;

    /// The object for one line from the node; `sent` keeps the bytes of the rounds so far.
    pub fn event(v: &Value, vm: &str, sent: &mut u64) -> Value {
        let num = |x: &Value| x.as_f64().unwrap_or(0.0);
        let int = |x: &Value| x.as_u64().unwrap_or(0);
        if let Some(p) = v.get("progress") {
            return match p["phase"].as_str() {
                Some("push") => json!({
                    "status": "postcopy-active",
                    "ram": {
                        "transferred": int(&p["bytes"]),
                        "remaining": int(&p["total_pages"]).saturating_sub(int(&p["pushed_pages"])) * PAGE,
                        "mbps": num(&p["mb_per_sec"]) * 8.0,
                        "page-size": PAGE,
                    },
                    "pushed-pages": p["pushed_pages"],
                    "total-pages": p["total_pages"],
                }),
                Some(_) => json!({
                    "status": "postcopy-active",
                    "downtime": p["downtime_ms"],
                    "ram": { "transferred": int(&p["bytes"]), "page-size": PAGE },
                    "to": p["to"],
                }),
                None => {
                    *sent += int(&p["bytes"]);
                    json!({
                        "status": "active",
                        "round": p["round"],
                        "expected-downtime": p["estimated_downtime_ms"],
                        "ram": {
                            "transferred": *sent,
                            "remaining": int(&p["remaining_pages"]) * PAGE,
                            "normal": p["pages"],
                            "normal-bytes": p["bytes"],
                            "mbps": num(&p["mb_per_sec"]) * 8.0,
                            "dirty-sync-count": p["round"],
                            "page-size": PAGE,
                        },
                    })
                }
            };
        }
        if v["ok"] != Value::Bool(true) {
            return json!({
                "status": "failed",
                "error-desc": v["error"].as_str().unwrap_or("the migration failed"),
                "vm": vm,
            });
        }
        let s = &v["summary"];
        json!({
            "status": "completed",
            "vm": vm,
            "from": s["from"],
            "to": s["to"],
            "mode": s["mode"],
            "total-time": s["total_ms"],
            "downtime": s["downtime_ms"],
            "ram": {
                "transferred": s["bytes"],
                "dirty-sync-count": s["rounds"],
                "page-size": PAGE,
            },
            "reused-memory": s["reused_memory"],
            "had-image": s["had_image"],
            "phases": s["phases"],
        })
    }
}
