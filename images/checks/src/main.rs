//! Small behaviours that the tests and benchmarks of popvmm check, one per subcommand:
//! argument and environment passing, exit codes, panics, faults (with a function a
//! backtrace can name), unimplemented system calls, file access and timing loops.
//!
//! Usage: `checks COMMAND [ARGS...]`, see [`USAGE`]. Everything but `enosys`, `null` and `ud`
//! behaves the same natively on Linux.

mod bench;
mod faults;
mod files;
mod process;

use std::time::{SystemTime, UNIX_EPOCH};

/// The commands, for the usage message.
const USAGE: &str = "usage: checks COMMAND [ARGS...]
commands:
  args [ARGS...]    print each argument and each environment variable (sorted)
  exit N            exit with status N
  panic             panic with \"boom from checks\"
  null              read through a null pointer (in crash_here)
  ud                execute an invalid instruction
  enosys            call a std API the libos does not implement
  read FILE         print FILE
  write FILE TEXT   write TEXT to FILE
  tmp               write, read, list and remove files in std::env::temp_dir()
  spin N [ITERS]    N threads each run a summing loop
  threads N         spawn and join N empty threads, one at a time
  pingpong N        two threads hand a token back and forth N times
  boottime          print the wall-clock time main started at
  nodes [UP]        print the cluster's nodes (pop::nodes()), once UP of them are up";

fn main() {
    // Taken first, for `boottime`: how long the VM took to reach main.
    let main_realtime = SystemTime::now();
    let args: Vec<String> = std::env::args().collect();
    let command = args.get(1).map(String::as_str).unwrap_or("");
    let rest = args.get(2..).unwrap_or_default();
    match (command, rest) {
        ("boottime", []) => {
            let ns = main_realtime
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            println!("main_realtime_ns={ns}");
        }
        ("args", _) => process::print_args_and_env(),
        ("exit", [code]) => process::exit(parse(code)),
        ("panic", []) => panic!("boom from checks"),
        ("null", []) => faults::null(),
        ("ud", []) => faults::invalid_instruction(),
        ("enosys", []) => faults::enosys(),
        ("read", [file]) => files::read(file),
        ("write", [file, text]) => files::write(file, text),
        ("tmp", []) => files::scratch(),
        ("spin", [threads]) => bench::spin(parse(threads), bench::DEFAULT_SPIN_ITERS),
        ("spin", [threads, iters]) => bench::spin(parse(threads), parse(iters)),
        ("threads", [n]) => bench::spawn_join(parse(n)),
        ("pingpong", [n]) => bench::pingpong(parse(n)),
        ("nodes", []) => process::print_nodes(1),
        ("nodes", [up]) => process::print_nodes(parse(up)),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Parses a numeric argument or exits with status 2.
fn parse<T: std::str::FromStr>(arg: &str) -> T {
    arg.parse().unwrap_or_else(|_| {
        eprintln!("checks: not a number: {arg:?}");
        std::process::exit(2)
    })
}
