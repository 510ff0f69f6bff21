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
    let _one = common::board::one_at_a_time();
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
    let _one = common::board::one_at_a_time();
    let c = BoardCluster::new(3, &["hello2", "helloN", "primesum", "pthreads", "spread"]);
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
    // A thread that moves keeps its floating-point registers, its rounding mode and its
    // clock; a move to a node that is down (node 2) fails and the thread goes on.
    for (args, expected) in [
        (
            ["fp", "50"],
            "fp: 50 moves, rounding kept, the clock never went back\nok\n",
        ),
        (
            ["dead", "2"],
            "dead: the node is down or cannot take the thread; still on node 0\nok\n",
        ),
    ] {
        let run = c.launch(&[], "spread", &args);
        assert_eq!((run.status, run.stdout.as_str()), (0, expected), "{run:?}");
    }
    // A thread blocked in a futex wait (a Condvar) moved from outside is woken where it went
    // (its hypercall's answer goes to its argument block there).
    c.launch_bg(&[], "spread", &["wait", "15000"]);
    c.wait_thread(2, 0, Some("blocked"));
    let moved = c.sh("popvmm migrate --id 0 spread --thread 2 --to 1");
    assert_eq!(
        moved.status,
        0,
        "{moved:?}\npeers: {}\nnode 1: {}\nlaunch: {}",
        c.sh("popvmm peers --id 0").stdout,
        c.log(1),
        c.sh("cat vm.err").stdout
    );
    c.wait_thread(2, 1, Some("blocked"));
    let woken = c.wait_vm();
    assert_eq!(
        (woken.status, woken.stdout.as_str()),
        (0, "wait: woken on node 1\nok\n"),
        "{woken:?}"
    );
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

/// The id (as `popvmm ps` prints it) of the VM whose home is node `home`, among `vms`.
fn vm_of_home(vms: &[serde_json::Value], home: u64) -> String {
    let vm = vms
        .iter()
        .find(|v| v["home"] == home)
        .unwrap_or_else(|| panic!("no VM of home {home}: {vms:?}"));
    match &vm["id"] {
        serde_json::Value::Number(n) => format!("{:#x}", n.as_u64().unwrap()),
        other => other.as_str().unwrap().to_string(),
    }
}

#[test]
fn a_mixed_cluster_of_this_host_and_two_boards_sees_both_isas_and_moves_within_each() {
    let _one = common::board::one_at_a_time();
    // Node 0 on this host (x86-64); nodes 1 and 2 on two boards, behind QEMU's NAT: each
    // listens on port 7000 inside its board, reached from here through the port edge-sim
    // forwards, and reaches this host's loopback (and so the other board) at 10.0.2.2.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| common::board::board_with(&["migrateme"], vec![7000]));
        let b = s.spawn(|| common::board::board_with(&[], vec![7000]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let board_node = |id: u32, board: &edge_sim::EdgeSim| {
        format!(
            "[[node]]\nid = {id}\naddress = \"127.0.0.1:{}\"\nlisten = \"0.0.0.0:7000\"\n\
             loopback_at = \"10.0.2.2\"\nisa = \"aarch64\"\n",
            board.host_port(7000).unwrap()
        )
    };
    let nodes = format!(
        "[[node]]\nid = 0\naddress = \"127.0.0.1:{host_port}\"\nisa = \"x86_64\"\n{}{}",
        board_node(1, &a),
        board_node(2, &b)
    );
    let (a, b) = (BoardCluster::on(a, &nodes), BoardCluster::on(b, &nodes));
    let host = tempfile::tempdir().unwrap();
    std::fs::write(
        host.path().join("secret"),
        format!("{}\n", common::board::SECRET),
    )
    .unwrap();
    let file = host.path().join("cluster.toml");
    std::fs::write(&file, format!("{}{nodes}", common::board::HEADER)).unwrap();
    let popvmm = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_popvmm"))
            .env("XDG_RUNTIME_DIR", host.path().join("run"))
            .args(args)
            .output()
            .unwrap()
    };

    b.start_node(2, None);
    // An x86-64 VM at home here, an aarch64 VM at home on board A.
    let x86 = common::Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_popvmm"))
            .env("XDG_RUNTIME_DIR", host.path().join("run"))
            .args(["launch", "--cluster", file.to_str().unwrap(), "--id", "0"])
            .arg(common::cluster::image("migrateme"))
            .args(["--", "400", "50", "4", "3", "4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    a.launch_bg_as(
        1,
        &["--memory", "64M"],
        "migrateme",
        &["400", "50", "4", "7", "4"],
    );

    // Either side lists all three nodes, both ISAs, every one up.
    let all_up = |table: &str| {
        let lines: Vec<&str> = table.lines().skip(1).collect();
        lines.len() == 3
            && lines
                .iter()
                .all(|l| l.contains(" up ") || l.contains(" local "))
            && lines[0].contains("x86_64")
            && lines[1].contains("aarch64")
            && lines[2].contains("aarch64")
    };
    let t0 = std::time::Instant::now();
    loop {
        let here = String::from_utf8_lossy(&popvmm(&["peers", "--id", "0"]).stdout).to_string();
        let there = a.sh("popvmm peers --id 1").stdout;
        if all_up(&here) && all_up(&there) {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "peers here:\n{here}\npeers on board A:\n{there}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Whole-VM migration across ISAs is refused in one line, either way, and both VMs run on.
    let vms = a.vms_asking(1);
    assert_eq!(vms.len(), 2, "ps lists the VMs of both ISAs: {vms:?}");
    let (x86_vm, arm_vm) = (vm_of_home(&vms, 0), vm_of_home(&vms, 1));
    let refused = popvmm(&["migrate", "--id", "0", &x86_vm, "--to", "1"]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("node 1 is aarch64"), "{err}");
    let refused = a.migrate_asking(1, &arm_vm, 0, &[]);
    assert_ne!(refused.status, 0, "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");
    assert!(refused.stderr.contains("node 0 is x86_64"), "{refused:?}");

    // Between the boards, through this host: there and back, pre-copy and post-copy.
    for (to, mode) in [(2, "precopy"), (1, "postcopy")] {
        let out = a.migrate_asking(1, &arm_vm, to, &["--mode", mode]);
        assert!(
            out.status == 0 && out.stdout.contains("migrated VM"),
            "to node {to} ({mode}): {out:?}"
        );
    }
    let arm = a.wait_vm();
    assert_eq!(arm.status, 7, "{arm:?}");
    assert!(arm.stdout.ends_with("done\n"), "{arm:?}");
    let (status, out, err) = common::cluster::finish(x86);
    assert_eq!(status, 3, "{err}");
    assert!(out.ends_with("done\n"), "{out}");
}
