//! Whole-VM live migration end to end: `popvmm launch --cluster` as node 0 (the VM's home),
//! `popvmm node` processes as the other nodes (Unix sockets on this machine), `popvmm ps` and
//! `popvmm migrate`. No timing is asserted; every wait is bounded.

use std::io::{BufRead, BufReader};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::cluster::{Cluster, SOON, finish, image, text};

fn assert_migrated(out: &Output) {
    assert!(
        out.status.success() && text(&out.stdout).contains("migrated VM"),
        "migrate failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("round 1:") || stdout.contains("switched over after"),
        "progress is shown: {stdout}"
    );
}

/// Waits until the VM printed its first line; the rest of its stdout comes with the thread
/// returned.
fn once_it_printed(vm: &mut common::Proc) -> std::thread::JoinHandle<String> {
    let stdout = vm.0.stdout.take().unwrap();
    let (began, begun) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            all += &line.unwrap();
            all.push('\n');
            let _ = began.send(());
        }
        all
    });
    begun.recv_timeout(SOON).expect("the VM printed nothing");
    reader
}

#[test]
fn a_vm_migrated_a_b_a_b_keeps_running_with_output_and_status_at_home() {
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    // 80 iterations of 50 ms (long enough for four migrations on a loaded machine), a thread
    // rewriting and checking 8 MiB, exit status 7, 12 MiB filled at the start and checked at
    // the end.
    let mut vm = c.launch(
        &["--memory", "64M"],
        "migrateme",
        &["80", "50", "8", "7", "12"],
    );
    // The first move once the guest's loop has begun on node 0 (filling its memory first
    // may take longer than all four moves).
    let reader = once_it_printed(&mut vm);
    // Any node can be asked: here, in turn, one that is neither source nor destination, the
    // destination, the source, and the launching node. The third and fourth arrivals find
    // the memory the VM left behind there (and must leave nothing of it but the VM's pages).
    for (i, (to, asked)) in [(1, 2), (2, 2), (1, 2), (2, 0)].into_iter().enumerate() {
        let out = c.migrate_asking(asked, "migrateme", to, &[]);
        assert_migrated(&out);
        if i >= 2 {
            let said = text(&out.stdout);
            assert!(said.contains("had the image and reused memory"), "{said}");
        }
        let vms = c.vms();
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert_eq!(vms[0]["node"], to, "ps shows where it runs");
        assert_eq!(vms[0]["home"], 0);
    }
    let (status, _, err) = finish(vm);
    let out = reader.join().unwrap();
    assert_eq!(status, 7, "stderr: {err}");
    let expected: String = (0..80).map(|i| format!("iteration {i}\n")).collect();
    assert!(out.starts_with(&expected), "{out}");
    assert!(out.contains("writer ok after"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    // The guest knows where it runs (`pop::current_nid()`): node 0 at first, node 2 at the
    // end, and only the nodes it was moved to in between, in that order.
    let nodes: Vec<u32> = err
        .lines()
        .filter_map(|l| l.strip_prefix("migrateme: on node "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(nodes.first(), Some(&0), "{err}");
    assert_eq!(nodes.last(), Some(&2), "{err}");
    assert!(nodes.windows(2).all(|w| w[0] != w[1]), "{err}");
    let moves = [0, 1, 2, 1, 2];
    let mut next = 0;
    for n in &nodes {
        while moves.get(next) != Some(n) {
            next += 1;
            assert!(next < moves.len(), "unexpected node order: {nodes:?}");
        }
    }
}

#[test]
fn primesum_migrated_mid_run_gives_the_right_sums() {
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    let reference = c
        .command()
        .arg("launch")
        .arg(image("primesum"))
        .args(["--", "10000000"])
        .output()
        .unwrap();
    assert!(reference.status.success());
    let vm = c.launch(&[], "primesum", &["10000000"]);
    assert_migrated(&c.migrate("primesum", 1, &[]));
    assert_migrated(&c.migrate("primesum", 2, &[]));
    let (status, out, err) = finish(vm);
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(out, text(&reference.stdout));
}

#[test]
fn a_destination_dying_mid_migration_leaves_the_vm_running_at_the_source() {
    let mut c = Cluster::new();
    // Node 1 dies when the first pages arrive (mid-copy), node 2 when the commit arrives
    // (the VM is stopped then, all memory sent: the switch-over's eve).
    c.start_with(1, false, Some("pages"));
    c.start_with(2, false, Some("commit"));
    let vm = c.launch(&["--memory", "64M"], "migrateme", &["60", "50", "8"]);
    for to in [1, 2] {
        let out = c.migrate("migrateme", to, &[]);
        assert!(!out.status.success(), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("node {to}")), "{err}");
        let vms = c.vms();
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert_eq!(vms[0]["node"], 0, "still at home");
        assert_eq!(vms[0]["state"], "running");
    }
    // Node 2 restarted, sound: the VM that stayed goes there and finishes.
    c.start(2, false);
    assert_migrated(&c.migrate("migrateme", 2, &[]));
    let (status, out, err) = finish(vm);
    assert_eq!(status, 0, "stderr: {err}");
    let expected: String = (0..60).map(|i| format!("iteration {i}\n")).collect();
    assert!(out.starts_with(&expected), "{out}");
    assert!(
        out.contains("writer ok after") && out.ends_with("done\n"),
        "{out}"
    );
}

#[test]
fn migrations_to_another_isa_or_a_node_with_a_wrong_secret_are_refused() {
    let mut c = Cluster::new();
    c.start(2, true);
    let vm = c.launch(&["--memory", "64M"], "migrateme", &["160", "50"]);
    let out = c.migrate("no-such-vm", 1, &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no VM"), "{}", text(&out.stderr));
    let out = c.migrate("migrateme", 3, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("same ISA"),
        "{}",
        text(&out.stderr)
    );
    let out = c.migrate("migrateme", 2, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not connected"),
        "{}",
        text(&out.stderr)
    );
    let out = c.migrate("migrateme", 0, &[]);
    assert!(!out.status.success());
    let (status, out, _) = finish(vm);
    assert_eq!(status, 0);
    assert!(out.ends_with("done\n"));
}

#[test]
fn a_vm_the_destination_refuses_runs_on_and_the_reason_is_one_line() {
    let mut c = Cluster::new();
    // Node 1 cannot map 2 GiB more: it refuses the VM's `BEGIN` while the source, which
    // does not wait for the answer, is already sending pages.
    c.start_limited(1, false, None, Some(1 << 30));
    let vm = c.launch(
        &["--memory", "2G"],
        "migrateme",
        &["60", "50", "0", "6", "8"],
    );
    let out = c.migrate("migrateme", 1, &[]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("node 1 refused the VM") && err.contains("cannot map"),
        "{err}"
    );
    let (status, out, _) = finish(vm);
    assert_eq!(status, 6, "{out}");
    assert!(out.ends_with("done\n"), "{out}");
}

#[test]
fn losing_the_node_that_runs_the_vm_ends_the_launch_with_one_line() {
    let mut c = Cluster::new();
    c.start(1, false);
    let vm = c.launch(&["--memory", "64M"], "migrateme", &["600", "50"]);
    assert_migrated(&c.migrate("migrateme", 1, &[]));
    drop(c.nodes[1].take()); // kills node 1, and the VM with it
    let (status, _, err) = finish(vm);
    assert_ne!(status, 0);
    assert!(err.contains("node 1, where the VM ran, was lost"), "{err}");
}

#[test]
fn a_write_heavy_vm_migrates_with_post_copy_and_back() {
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    // A thread rewriting and checking 16 MiB; the other loop sleeps; exit status 5; 12 MiB
    // filled at the start and checked at the end (pushed whole blocks and partly fetched
    // ones must both arrive intact).
    let vm = c.launch(
        &["--memory", "64M"],
        "migrateme",
        &["80", "50", "16", "5", "12"],
    );
    for (i, to) in [1, 2, 1].into_iter().enumerate() {
        let out = c.migrate("migrateme", to, &["--mode", "postcopy"]);
        assert_migrated(&out);
        // The third arrival pushes its pages through the memory the VM left on node 1.
        if i == 2 {
            let said = text(&out.stdout);
            assert!(said.contains("reused memory"), "{said}");
        }
        let vms = c.vms();
        assert!(vms.iter().any(|v| v["node"] == to), "{vms:?}");
    }
    assert_migrated(&c.migrate("migrateme", 2, &[]));
    let (status, out, err) = finish(vm);
    assert_eq!(status, 5, "stderr: {err}");
    let expected: String = (0..80).map(|i| format!("iteration {i}\n")).collect();
    assert!(out.starts_with(&expected), "{out}");
    assert!(
        out.contains("writer ok after") && out.ends_with("done\n"),
        "{out}"
    );
}

#[test]
fn a_migrated_vm_keeps_using_the_files_of_its_home() {
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    let data = c.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mount = format!("{}:/data:rw", data.display());
    // It holds /data/log.txt open and appends a line per iteration, wherever it runs.
    let vm = c.launch(
        &[
            "--memory",
            "64M",
            "--mount",
            &mount,
            "--env",
            "MIGRATEME_LOG=/data/log.txt",
        ],
        "migrateme",
        &["80", "50"],
    );
    // Away from home, back home (files served locally again), and away.
    for to in [1, 2, 0, 1] {
        std::thread::sleep(Duration::from_millis(150));
        assert_migrated(&c.migrate("migrateme", to, &[]));
    }
    let (status, out, err) = finish(vm);
    assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("log ok: 80 lines"), "{out}");
    let expected: String = (0..80).map(|i| format!("iteration {i}\n")).collect();
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        expected,
        "every line is in the home's file"
    );
}

#[test]
fn losing_a_post_copy_source_before_it_pushed_everything_loses_the_vm_with_one_line() {
    // Post-copy's exposure: until every page moved, the VM needs its source.
    let mut c = Cluster::new();
    c.start_with(1, false, Some("push"));
    c.start(2, false);
    let vm = c.launch(&["--memory", "64M"], "migrateme", &["200", "50", "16"]);
    assert_migrated(&c.migrate("migrateme", 1, &[]));
    // Node 1 dies right after the switch-over, before pushing the writer's pages.
    let out = c.migrate("migrateme", 2, &["--mode", "postcopy"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let (status, _, err) = finish(vm);
    assert_ne!(status, 0);
    // (`migrateme` itself reports the nodes it runs on.)
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("migrateme: on node"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        err.contains("post-copy: node 1 still held pages") && err.contains("the VM is lost"),
        "{err}"
    );
}

/// A node of the cluster (authenticated, so past the handshake) that sends malformed or
/// misplaced messages gets an error answer for each request, and the node runs on.
#[test]
fn malformed_and_unknown_messages_are_refused_and_the_node_runs_on() {
    use net_msg::{ClusterConfig, Node, NodeOptions, Priority};
    use pop_migrate::msg::{MsgType, VmList};

    let mut c = Cluster::new();
    c.start(1, false);
    let cluster = ClusterConfig::load(&c.file).unwrap();
    let peer = Node::start(NodeOptions::new(cluster, 2).unwrap(), |_| {}).unwrap();
    let t0 = Instant::now();
    while !peer.is_up(1) {
        assert!(t0.elapsed() < SOON, "node 1 never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ask = |t: u16, payload: &[u8]| {
        peer.request(1, t, Priority::Control, payload, Duration::from_secs(10))
    };
    let refused = |t: u16, payload: &[u8], what: &str| {
        let e = ask(t, payload).expect_err(what).to_string();
        assert!(e.contains(what), "type {t}: {e}");
    };
    refused(0, b"", "unknown type 0");
    refused(999, b"x", "unknown type 999");
    refused(MsgType::Begin.number(), b"\x01\x00garbage", "bad BEGIN");
    refused(MsgType::Commit.number(), &[0xff; 40], "bad COMMIT");
    refused(MsgType::Go.number(), &[1, 2, 3], "bad GO");
    refused(
        MsgType::Go.number(),
        &7u64.to_le_bytes(),
        "no VM 7 is arriving",
    );
    let fetch = [5u64.to_le_bytes(), 0x4000_0000u64.to_le_bytes()].concat();
    refused(MsgType::Fetch.number(), &fetch, "no pages of VM 5");
    refused(MsgType::File.number(), &[0; 3], "bad FILE");
    refused(MsgType::Migrate.number(), &[0; 5], "bad MIGRATE");
    // Well-formed requests are still answered.
    let list = ask(MsgType::List.number(), &[]).unwrap();
    assert_eq!(
        pop_wire::from_bytes::<VmList>(&list).unwrap(),
        VmList::default()
    );
    assert_eq!(
        ask(MsgType::Ping.number(), b"still there").unwrap(),
        b"still there"
    );
    assert!(c.popvmm(&["peers", "--id", "1"]).status.success());
}

/// A VM launched into a cluster sees every node of the cluster file (`pop::nodes()`), with its
/// ISA and whether its node reaches it, and knows which one it runs on.
#[test]
fn a_vm_in_a_cluster_sees_its_nodes() {
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    let out = c
        .command()
        .args(["launch", "--cluster", c.file.to_str().unwrap(), "--id", "0"])
        .arg(image("checks"))
        .args(["--", "nodes", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "node 0 x86_64 up (here)\nnode 1 x86_64 up\nnode 2 x86_64 up\nnode 3 aarch64 down\n"
    );
}

/// The JSON objects `popvmm migrate --json` printed, one a line (each must parse).
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn migrate_json_reports_progress_and_the_result_in_query_migrate_s_words() {
    let mut c = Cluster::new();
    c.start(1, false);
    let vm = c.launch(
        &["--memory", "64M"],
        "migrateme",
        &["120", "50", "8", "0", "12"],
    );
    std::thread::sleep(Duration::from_millis(300));
    // Pre-copy: rounds while it runs ("active"), then the result.
    let out = c.migrate("migrateme", 1, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_lines(&out);
    let (last, progress) = events.split_last().unwrap();
    assert!(!progress.is_empty(), "no progress: {events:?}");
    for (i, e) in progress.iter().enumerate() {
        assert_eq!(e["status"], "active", "{e}");
        assert_eq!(e["round"], i as u64 + 1, "{e}");
        assert!(e["ram"]["transferred"].as_u64().unwrap() > 0, "{e}");
        assert!(e["expected-downtime"].as_f64().is_some(), "{e}");
    }
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(
        (last["from"].clone(), last["to"].clone()),
        (0.into(), 1.into())
    );
    assert_eq!(last["mode"], "precopy");
    let (total, downtime) = (
        last["total-time"].as_f64().unwrap(),
        last["downtime"].as_f64().unwrap(),
    );
    assert!(total > 0.0 && downtime > 0.0 && downtime <= total, "{last}");
    // Every round's bytes and the last copy's are in the total.
    let rounds = progress.last().unwrap()["ram"]["transferred"]
        .as_u64()
        .unwrap();
    assert!(
        last["ram"]["transferred"].as_u64().unwrap() >= rounds,
        "{last}"
    );
    assert!(last["ram"]["dirty-sync-count"].as_u64().unwrap() >= progress.len() as u64);
    assert!(
        last["phases"].is_object() || last["phases"].is_array(),
        "{last}"
    );
    // Post-copy: the switch-over, the pushes ("postcopy-active"), then the result.
    let out = c.migrate("migrateme", 0, &["--json", "--mode", "postcopy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_lines(&out);
    let (last, progress) = events.split_last().unwrap();
    assert_eq!(progress[0]["status"], "postcopy-active", "{events:?}");
    assert_eq!(progress[0]["to"], 0, "{events:?}");
    assert!(progress.iter().all(|e| e["status"] == "postcopy-active"));
    assert_eq!(
        (last["status"].as_str(), last["mode"].as_str()),
        (Some("completed"), Some("postcopy"))
    );
    // A refused migration: one JSON object saying why, one line on stderr, status non-zero;
    // the VM runs on.
    let out = c.migrate("migrateme", 3, &["--json"]);
    assert!(!out.status.success());
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], "failed");
    let why = events[0]["error-desc"].as_str().unwrap();
    assert!(why.contains("node 3 is aarch64"), "{why}");
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    let (status, out, err) = finish(vm);
    assert_eq!(status, 0, "{err}");
    assert!(out.ends_with("done\n"), "{out}");
}

#[test]
fn a_cancelled_migration_fails_in_one_line_and_the_vm_runs_on_where_it_was() {
    let mut c = Cluster::new();
    c.start(1, false);
    // 768 MiB filled: the first round takes long enough to be stopped during it; 15 s of
    // iterations outlast the cancelled move and a whole one after it (in a debug build too).
    let mut vm = c.launch(
        &["--memory", "1G"],
        "migrateme",
        &["100", "150", "0", "0", "768"],
    );
    let reader = once_it_printed(&mut vm);
    let cancel = || c.popvmm(&["migrate", "--cancel", "migrateme", "--id", "1"]);
    std::thread::scope(|s| {
        let moving = s.spawn(|| c.migrate("migrateme", 1, &[]));
        let t0 = Instant::now();
        while !c.vms().iter().any(|v| v["state"] == "migrating") {
            assert!(t0.elapsed() < SOON, "the migration did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Asked of another node than the one the migration was asked of.
        let out = cancel();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("stops before its switch-over"));
        let out = moving.join().unwrap();
        assert!(!out.status.success(), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("cancelled"), "{err}");
    });
    let vms = c.vms();
    assert_eq!(
        (vms[0]["node"].as_u64(), vms[0]["state"].as_str()),
        (Some(0), Some("running"))
    );
    // Nothing to stop now; and the next migration goes through.
    let out = cancel();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not migrating"),
        "{}",
        text(&out.stderr)
    );
    assert_migrated(&c.migrate("migrateme", 1, &[]));
    let (status, _, err) = finish(vm);
    assert_eq!(status, 0, "{err}");
    let out = reader.join().unwrap();
    let expected: String = (0..100).map(|i| format!("iteration {i}\n")).collect();
    assert!(
        out.starts_with(&expected) && out.ends_with("done\n"),
        "{out}"
    );
}
