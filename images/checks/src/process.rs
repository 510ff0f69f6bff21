//! Arguments, environment and exit status.

/// Prints `arg[i]=...` for each argument, then `env K=V` for each variable, sorted.
pub fn print_args_and_env() {
    for (i, arg) in std::env::args().enumerate() {
        println!("arg[{i}]={arg}");
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        println!("env {key}={value}");
    }
}

/// Exits with `code`, without unwinding or returning from main.
pub fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// Prints the cluster's nodes, one line each (`node ID ISA up|down`, and `(here)` for the
/// node it runs on), once at least `up` of them are up (waiting at most 10 s for the mesh to
/// connect).
pub fn print_nodes(up: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pop::nodes().filter(|n| n.up).count() < up && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let here = pop::current_nid();
    for n in pop::nodes() {
        let state = if n.up { "up" } else { "down" };
        let mark = if n.id == here { " (here)" } else { "" };
        println!("node {} {} {state}{mark}", n.id, n.isa);
    }
}
