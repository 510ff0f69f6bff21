//! Threads of one VM on several nodes, end to end: `popvmm launch --cluster` as node 0 (the
//! VM's origin), `popvmm node` processes as the others, threads moving themselves
//! (`pop::migrate`) or moved from outside (`popvmm migrate --thread`), memory coherent
//! between the nodes. Outputs are compared exactly; no timing is asserted; every wait is
//! bounded.

use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::cluster::{Cluster, SOON, finish, text};

/// Runs `name -- args` launched on node 0 to its end: (status, stdout, stderr).
fn run(c: &Cluster, name: &str, args: &[&str]) -> (i32, String, String) {
    finish(c.launch(&[], name, args))
}

fn assert_output(c: &Cluster, name: &str, args: &[&str], expected: &str) {
    let (status, out, err) = run(c, name, args);
    assert_eq!(
        (status, out.as_str()),
        (0, expected),
        "{name} {args:?}: {err}"
    );
}

/// The threads `ps --threads` lists (asking node 0).
fn threads(c: &Cluster) -> Vec<Value> {
    let out = c.popvmm(&["ps", "--threads", "--id", "0", "--json"]);
    assert!(out.status.success(), "ps --threads: {}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (bounded) until `ps --threads` shows thread `tid` on `node` in `state` (any state
/// if `None`).
fn wait_thread(c: &Cluster, tid: u64, node: u64, state: Option<&str>) {
    let t0 = Instant::now();
    loop {
        let list = threads(c);
        let found = list
            .iter()
            .any(|t| t["tid"] == tid && t["node"] == node && state.is_none_or(|s| t["state"] == s));
        if found {
            return;
        }
        assert!(
            t0.elapsed() < SOON,
            "thread {tid} never showed on node {node}: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn move_thread(c: &Cluster, vm: &str, tid: u32, to: u32) {
    let out = c.popvmm(&[
        "migrate",
        vm,
        "--thread",
        &tid.to_string(),
        "--to",
        &to.to_string(),
        "--id",
        "0",
    ]);
    assert!(
        out.status.success(),
        "migrate --thread: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_tutorial_programs_print_what_popcorn_s_print() {
    let mut c = Cluster::new();
    c.start(1, false);
    let hello = |nodes: &[u32]| -> String {
        nodes
            .iter()
            .map(|n| format!("hello, world (node {n})\n"))
            .collect()
    };
    assert_output(&c, "hello2", &[], &hello(&[0, 1]));
    assert_output(&c, "helloN", &[], &hello(&[0, 1, 0, 1, 0]));
    assert_output(&c, "helloS", &["4", "100"], &hello(&[0, 1, 0, 1, 0]));
    assert_output(
        &c,
        "helloId",
        &[],
        "pid 1 tid ThreadId(1) node 0\npid 1 tid ThreadId(1) node 1\n",
    );
    let threads: String = (0..4)
        .map(|i| format!("thread {i} ran on nodes 0 1 0\n"))
        .collect();
    assert_output(
        &c,
        "pthreads",
        &[],
        &format!("main on node 0\n{threads}main on node 0\n"),
    );
}

#[test]
fn std_synchronization_works_with_threads_on_three_nodes() {
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    assert_output(
        &c,
        "spread",
        &["mutex", "6", "100000"],
        "mutex: 600000 on 3 nodes\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["atomic", "6", "100000"],
        "atomic: 600000\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["condvar", "200"],
        "condvar: 400 turns, main on node 0, the other on node 1\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["channel", "1000"],
        "channel: 1000 in order, sent from node 1\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["barrier", "6", "10"],
        "barrier: 10 rounds of 6 threads on 3 nodes\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["spawn"],
        "spawn: main on node 1, its new thread started on node 1\nok\n",
    );
}

#[test]
fn a_thread_moved_1000_times_there_and_back_finds_shared_data_intact() {
    let mut c = Cluster::new();
    c.start(1, false);
    assert_output(
        &c,
        "spread",
        &["bounce", "1000", "2"],
        "bounce: 1000 moves, ended on node 0, every word intact\nok\n",
    );
}

#[test]
fn a_thread_that_moves_keeps_its_rounding_mode_its_floating_point_values_and_its_clock() {
    // Its vector registers stay behind (it asks from a call boundary): what it keeps live
    // across a move, and the control word it set, must come out as on one node.
    let mut c = Cluster::new();
    c.start(1, false);
    assert_output(
        &c,
        "spread",
        &["fp", "200"],
        "fp: 200 moves, rounding kept, the clock never went back\nok\n",
    );
}

#[test]
fn a_move_to_a_node_that_is_down_or_of_another_isa_fails_and_the_thread_goes_on() {
    let mut c = Cluster::new();
    c.start(1, false);
    assert_output(
        &c,
        "spread",
        &["dead", "2"],
        "dead: the node is down or cannot take the thread; still on node 0\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["dead", "3"],
        "dead: the node has another instruction set; still on node 0\nok\n",
    );
    assert_output(
        &c,
        "spread",
        &["dead", "9"],
        "dead: no such node in the cluster; still on node 0\nok\n",
    );
    // A VM launched alone is not in a cluster: the same call says so.
    let out = c
        .command()
        .arg("launch")
        .arg(common::cluster::image("spread"))
        .args(["--", "dead", "1"])
        .output()
        .unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout).as_str()),
        (
            Some(0),
            "dead: not running in a cluster; still on node 0\nok\n"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn threads_move_from_outside_in_a_sleep_a_futex_wait_and_a_join() {
    let mut c = Cluster::new();
    c.start(1, false);
    // The loop thread (tid 2) sleeps most of the time; the main thread (tid 1) is in a join.
    let p = c.launch(&[], "migratemep", &["12", "300"]);
    wait_thread(&c, 2, 0, Some("blocked"));
    move_thread(&c, "migratemep", 2, 1);
    wait_thread(&c, 2, 1, None);
    // Now that it spans nodes, the VM cannot move whole: refused in one line, and it goes on.
    let whole = c.migrate("migratemep", 1, &[]);
    let said = text(&whole.stderr);
    assert!(
        !whole.status.success() && said.contains("spans nodes") && said.trim().lines().count() == 1,
        "a whole move of a spanning VM: {said}"
    );
    move_thread(&c, "migratemep", 1, 1);
    wait_thread(&c, 1, 1, None);
    move_thread(&c, "migratemep", 2, 0);
    let (status, out, err) = finish(p);
    let iterations: String = (0..12).map(|i| format!("iteration {i}\n")).collect();
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        out,
        format!("main on node 0\n{iterations}loop ended on node 0\nmain on node 1\n")
    );
    // (Whether an iteration began while it was on node 1 depends on the timing; that it was
    // there, ps showed, and moving it back paused it there.)
    assert!(err.starts_with("migratemep: on node 0\n"), "{err}");
    // A thread blocked in a futex wait (a Condvar) moves, and is woken there when the main
    // thread notifies it (after 6 s, long enough for the move on a loaded machine).
    let p = c.launch(&[], "spread", &["wait", "6000"]);
    wait_thread(&c, 2, 0, Some("blocked"));
    move_thread(&c, "spread", 2, 1);
    wait_thread(&c, 2, 1, Some("blocked"));
    let (status, out, err) = finish(p);
    assert_eq!(
        (status, out.as_str()),
        (0, "wait: woken on node 1\nok\n"),
        "{err}"
    );
}

#[test]
fn losing_a_node_that_runs_threads_ends_the_vm_with_one_line() {
    let mut c = Cluster::new();
    c.start(1, false);
    let p = c.launch(&[], "migratemep", &["100", "100"]);
    wait_thread(&c, 2, 0, None);
    move_thread(&c, "migratemep", 2, 1);
    wait_thread(&c, 2, 1, None);
    c.nodes[1] = None; // killed
    let t0 = Instant::now();
    let (status, _, err) = finish(p);
    assert_eq!(status, 125, "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("popvmm: error: node 1, which ran thread 2 of the VM, was lost;")
            && last.contains("only it held"),
        "{err}"
    );
    // Within the loss time (heartbeats of 200 ms), not after the application's own end.
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
}

/// How many messages of type `t` node `id` received since its statistics were last reset
/// (resetting them).
fn received(c: &Cluster, id: u32, t: u16) -> u64 {
    let out = c.popvmm(&["stat", "--id", &id.to_string(), "--reset"]);
    assert!(out.status.success(), "stat: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&t.to_string().as_str())).then(|| f[3].parse().unwrap())
        })
        .unwrap_or(0)
}

/// `ARRIVE`'s number: a thread arriving at a node.
const ARRIVE: u16 = 81;

#[test]
fn primesum_with_threads_on_two_nodes_gives_the_seed_s_sums() {
    let mut c = Cluster::new();
    c.start(1, false);
    let sums = "thread 0 sum is 9594\nthread 1 sum is 8392\nthread 2 sum is 8013\n\
                thread 3 sum is 7863\nsum is 33862\n";
    received(&c, 1, ARRIVE);
    // The program places its threads itself...
    assert_output(&c, "primesum", &["400000", "4", "spread"], sums);
    assert!(received(&c, 1, ARRIVE) >= 2, "no thread went to node 1");
    // ... or the launch does, for an unmodified program.
    let (status, out, err) = finish(c.launch(&["--spread"], "primesum", &[]));
    assert_eq!((status, out.as_str()), (0, sums), "{err}");
    assert!(received(&c, 1, ARRIVE) >= 2, "no thread went to node 1");
}

#[test]
fn the_std_tour_with_its_threads_spread_prints_what_it_prints_on_one_node() {
    let mut c = Cluster::new();
    c.start(1, false);
    let (status, alone, err) = run(&c, "stdtour", &[]);
    assert_eq!(status, 0, "{err}");
    received(&c, 1, ARRIVE);
    let (status, spread, err) = finish(c.launch(&["--spread"], "stdtour", &[]));
    assert_eq!(status, 0, "{err}");
    assert_eq!(spread, alone);
    assert!(
        received(&c, 1, ARRIVE) >= 5,
        "the tour's threads did not go to node 1"
    );
}

#[test]
fn files_opened_on_one_node_are_used_and_closed_on_another() {
    // One descriptor table for the VM (its origin's): a file a thread on node 1 opened is
    // read by the main thread on node 0, and one node 0 opened is written and closed on 1.
    let mut c = Cluster::new();
    c.start(1, false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "made on the host\n").unwrap();
    let mount = format!("{}:/data:rw", dir.path().display());
    let (status, out, err) = finish(c.launch(&["--mount", &mount], "spread", &["files", "/data"]));
    assert_eq!(
        (status, out.as_str()),
        (
            0,
            "files: node 0 read \"made on the host\", opened on node 1\n\
             files: out.txt holds \"written on node 1\"\nok\n"
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written on node 1\n"
    );
}

#[test]
fn a_thread_on_another_node_uses_the_vm_s_own_tmp() {
    // No mount: the VM's /tmp is kept at its home, for its threads wherever they run, and
    // goes when the launch ends.
    let mut c = Cluster::new();
    c.start(1, false);
    let p = c.launch(&[], "spread", &["tmp"]);
    let pid = p.0.id();
    let (status, out, err) = finish(p);
    assert_eq!(
        (status, out.as_str()),
        (
            0,
            "tmp: node 0 read \"written on node 1\" from /tmp/made.txt\nok\n"
        ),
        "{err}"
    );
    assert_eq!(common::scratch_dirs_of(pid), Vec::<String>::new());
}

#[test]
fn the_vmm_s_own_accesses_share_a_page_with_another_node_s_writes() {
    // A file read's data, written into guest memory by node 1's VMM, and a file write's,
    // read from it, in a page whose counter a thread on node 0 keeps incrementing: the
    // VMM's accesses go through the DSM as the guest's do (no stale byte, no lost increment,
    // and nothing waits forever on a page).
    let mut c = Cluster::new();
    c.start(1, false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "bytes from the host\n").unwrap();
    let mount = format!("{}:/data:rw", dir.path().display());
    let (status, out, err) = finish(c.launch(
        &["--mount", &mount],
        "spread",
        &["vmmshare", "300", "/data"],
    ));
    assert_eq!(
        (status, out.as_str()),
        (
            0,
            "vmmshare: 300 file reads into and writes from a page node 0 writes, on node 1: \
             every byte and every increment there\nok\n"
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "bytes from the host\n".repeat(300)
    );
}

#[test]
fn a_scan_of_memory_written_on_another_node_reads_every_word_and_brings_it_back() {
    // 64 MiB written on node 0 and read in order on node 1 (its whole huge pages come as
    // streamed runs: a frame each, their 2 MiB on the page stream), every word checked there;
    // every 97th word then changed on node 1, and every word checked back on node 0.
    let mut c = Cluster::new();
    c.start(1, false);
    let (status, out, err) = finish(c.launch(&[], "spread", &["scan", "64"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(status, 0, "{out}{err}");
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("scan: 64 MiB read on node 1 in "),
        "{out}"
    );
    assert_eq!(
        lines[1..],
        ["scan: every word as node 1 left it, back on node 0", "ok"]
    );
}

#[test]
fn a_vm_moved_whole_spans_nodes_from_where_it_went() {
    // `helloS` is launched on node 0 and moved whole to node 2 during its first sleep; its
    // thread then moves to node 1 and back to node 0 (where the launch is), with node 2 as
    // the VM's origin now: its output still comes to the launch, exactly as without the move.
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    let p = c.launch(&[], "helloS", &["2", "4000"]);
    let t0 = Instant::now();
    loop {
        let moved = c.migrate("helloS", 2, &[]);
        if moved.status.success() {
            break;
        }
        // (Well inside the first sleep, so that the thread is still at home when it moves.)
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the whole move: {}",
            text(&moved.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, out, err) = finish(p);
    assert_eq!(
        (status, out.as_str()),
        (
            0,
            "hello, world (node 0)\nhello, world (node 1)\nhello, world (node 0)\n"
        ),
        "{err}"
    );
}

#[test]
fn a_vm_whose_origin_lacks_write_protect_spreads_with_pages_moving_whole() {
    // The origin runs as on an arm64 kernel before 6.10: the VM's nodes hold no read copies,
    // node 1 (which could) included.
    let mut c = Cluster::new();
    c.start(1, false);
    let no_wp = [("POPVMM_TEST_NO_WRITE_PROTECT", "1")];
    let run = |name: &str, options: &[&str], args: &[&str]| {
        finish(c.launch_env(&no_wp, options, name, args))
    };
    let (status, out, err) = run("hello2", &[], &[]);
    assert_eq!(
        (status, out.as_str()),
        (0, "hello, world (node 0)\nhello, world (node 1)\n"),
        "{err}"
    );
    let sums = "thread 0 sum is 9594\nthread 1 sum is 8392\nthread 2 sum is 8013\n\
                thread 3 sum is 7863\nsum is 33862\n";
    let (status, out, err) = run("primesum", &["--spread"], &[]);
    assert_eq!((status, out.as_str()), (0, sums), "{err}");
    let (status, out, err) = run("spread", &[], &["scan", "16"]);
    assert_eq!(status, 0, "{out}{err}");
    assert!(out.contains("scan: 16 MiB read on node 1"), "{out}");
    // (Not `spread falseshare`: without read copies, two nodes writing one page can starve
    // one of them for a while, since a page has no minimum time at a node; see ARCHITECTURE.)
}

#[test]
fn a_node_without_write_protect_cannot_join_a_vm_whose_nodes_hold_read_copies() {
    // A thread's move there fails (hello2 says so and exits 1), it goes on where it was, and
    // the reason is one line.
    let mut c = Cluster::new();
    c.start_without_write_protect(1);
    let (status, out, err) = finish(c.launch_env(&[("RUST_LOG", "warn")], &[], "hello2", &[]));
    assert_eq!(
        (status, out.as_str()),
        (1, "hello, world (node 0)\n"),
        "{err}"
    );
    assert!(err.contains("cannot migrate to node 1"), "{err}");
    let why: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("could not move to node 1"))
        .collect();
    assert_eq!(why.len(), 1, "{err}");
    assert!(
        why[0].contains("node 1 cannot write-protect guest memory"),
        "{err}"
    );
}
