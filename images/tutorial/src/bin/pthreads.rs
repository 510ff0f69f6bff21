//! The Popcorn tutorial's pthread example: the main thread starts `N` threads (default 4);
//! each reports its node, moves itself to the other node, reports again, comes back and
//! reports a third time; the main thread prints the reports in order once all have joined,
//! then its own node.
//!
//! Usage: `pthreads [N]`.

fn main() {
    let count = tutorial::arg(1, 4);
    let home = pop::current_nid();
    let other = tutorial::other_node_or_exit();
    println!("main on node {home}");
    let threads: Vec<_> = (0..count)
        .map(|i| {
            std::thread::spawn(move || {
                let mut seen = vec![pop::current_nid()];
                for to in [other, home] {
                    if let Err(e) = pop::migrate(to) {
                        return Err(format!("thread {i}: cannot migrate to node {to}: {e}"));
                    }
                    seen.push(pop::current_nid());
                }
                Ok(seen)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join().expect("a thread") {
            Ok(seen) => {
                let nodes: Vec<String> = seen.iter().map(u32::to_string).collect();
                println!("thread {i} ran on nodes {}", nodes.join(" "));
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    println!("main on node {}", pop::current_nid());
}
