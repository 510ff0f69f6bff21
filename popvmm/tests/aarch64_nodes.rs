//! aarch64 nodes do what x86-64 nodes do: clusters of `popvmm node`s on a simulated board
//! (real aarch64 KVM inside, Linux 6.1: no `UFFDIO_MOVE`, no userfaultfd write-protect)
//! moving whole VMs with pre-copy and post-copy, spreading threads over nodes, and losing a
//! node mid-migration without losing the VM. Outputs are compared with x86-64's.

mod common;
use common::board::BoardCluster;

/// `hello, world (node N)` for each of `nodes`.
fn hello(nodes: &[u32]) -> String {
    nodes
        .iter()
        .map(|n| format!("hello, world (node {n})\n"))
        .collect()
}

#[test]
fn whole_vms_move_between_aarch64_nodes_and_a_node_lost_mid_copy_loses_nothing() {
    let c = BoardCluster::new(4, &["migrateme"]);
    c.start_node(1, None);
    c.start_node(2, None);
    // Node 3 dies when the first pages arrive (mid-copy).
    c.start_node(3, Some("pages"));
    // 600 iterations of 50 ms (long enough for five migrations on the board), a thread
    // rewriting and checking 8 MiB, exit status 7, 12 MiB filled at the start and checked
    // at the end; the program checks that its monotonic clock never goes back.
    c.launch_bg(
        &["--memory", "64M"],
        "migrateme",
        &["600", "50", "8", "7", "12"],
    );
    let dying = c.migrate("migrateme", 3, &[]);
    assert_ne!(dying.status, 0, "{dying:?}");
    assert_eq!(dying.stderr.lines().count(), 1, "one line: {dying:?}");
    assert!(dying.stderr.contains("node 3"), "{dying:?}");
    let vms = c.vms();
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(vms[0]["node"], 0, "still at home: {vms:?}");
    assert_eq!(vms[0]["state"], "running");
    // Pre-copy to a fresh node, post-copy from there to another fresh node (its memory
    // arrives on demand), and back with each.
    for (to, mode) in [
        (1, "precopy"),
        (2, "postcopy"),
        (1, "postcopy"),
        (2, "precopy"),
    ] {
        let out = c.migrate("migrateme", to, &["--mode", mode]);
        assert!(
            out.status == 0 && out.stdout.contains("migrated VM"),
            "to node {to} ({mode}): {out:?}\nnode logs:\n{}\n{}",
            c.log(1),
            c.log(2)
        );
        let vms = c.vms();
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert_eq!(vms[0]["node"], to, "after {out:?}: {vms:?}");
        assert_eq!(vms[0]["home"], 0);
    }
    let vm = c.wait_vm();
    assert_eq!(vm.status, 7, "{vm:?}");
    let expected: String = (0..600).map(|i| format!("iteration {i}\n")).collect();
    assert!(vm.stdout.starts_with(&expected), "{vm:?}");
    assert!(
        vm.stdout.contains("writer ok after") && vm.stdout.ends_with("done\n"),
        "{vm:?}"
    );
    // The guest knows where it runs: node 0 first, then only nodes it was moved to, in
    // that order (it looks once an iteration, so a move near the end may go unseen).
    let nodes: Vec<&str> = vm
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("migrateme: on node "))
        .collect();
    let moves = ["0", "1", "2", "1", "2"];
    assert!(
        nodes.len() >= 4 && moves.starts_with(&nodes),
        "{nodes:?}: {}",
        vm.stderr
    );
}

#[test]
fn threads_spread_over_aarch64_nodes_print_what_they_print_on_x86_64() {
    let c = BoardCluster::new(3, &["hello2", "helloN", "primesum", "pthreads"]);
    c.start_node(1, None);
    // The seed tutorial's programs, which move their threads themselves (the same outputs
    // as the x86-64 cluster tests expect).
    for (name, expected) in [
        ("hello2", hello(&[0, 1])),
        ("helloN", hello(&[0, 1, 0, 1, 0])),
        (
            "pthreads",
            format!(
                "main on node 0\n{}main on node 0\n",
                (0..4)
                    .map(|i| format!("thread {i} ran on nodes 0 1 0\n"))
                    .collect::<String>()
            ),
        ),
    ] {
        let run = c.launch(&[], name, &[]);
        assert_eq!(
            (run.status, run.stdout.as_str()),
            (0, expected.as_str()),
            "{name}: {run:?}"
        );
    }
    // primesum, its threads placed by the program and by the launch; each time threads
    // arrive at node 1.
    let sums = "thread 0 sum is 9594\nthread 1 sum is 8392\nthread 2 sum is 8013\n\
                thread 3 sum is 7863\nsum is 33862\n";
    arrivals(&c, 1);
    let placed = c.launch(&[], "primesum", &["400000", "4", "spread"]);
    assert_eq!(
        (placed.status, placed.stdout.as_str()),
        (0, sums),
        "{placed:?}"
    );
    assert!(arrivals(&c, 1) >= 2, "no thread went to node 1");
    let spread = c.launch(&["--spread"], "primesum", &[]);
    assert_eq!(
        (spread.status, spread.stdout.as_str()),
        (0, sums),
        "{spread:?}"
    );
    assert!(arrivals(&c, 1) >= 2, "no thread went to node 1");
}

/// How many threads arrived at node `id` (`ARRIVE` messages, 81) since the last call.
fn arrivals(c: &BoardCluster, id: u32) -> u64 {
    let run = c.sh(&format!("popvmm stat --id {id} --reset"));
    assert_eq!(run.status, 0, "{run:?}");
    run.stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"81")).then(|| f[3].parse().unwrap())
        })
        .unwrap_or(0)
}
