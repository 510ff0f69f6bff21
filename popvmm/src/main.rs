//! `popvmm`: the command line. `launch` runs an application image in a VM (`vmm`), `node`
//! runs a cluster node, and the other subcommands ask a running node through its control
//! socket (`ps`, `migrate`, `peers`, `stat`, `ping`).

mod cli;
mod home;
mod node;
mod router;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use clap::error::ErrorKind;
use cli::{Cli, Command};
use vmm::launch::EXIT_VMM_ERROR;

fn main() -> ExitCode {
    let process_start = Instant::now();
    vmm::sys::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(EXIT_VMM_ERROR as u8);
        }
        Err(e) => fail(&first_line(&e.render().to_string())),
    };
    let cpus = match &cli.command {
        Command::Launch(args) => args.cpus.as_ref(),
        Command::Node(args) => args.cpus.as_ref(),
        _ => None,
    };
    if let Some(cpus) = cpus
        && let Err(e) = vmm::sys::run_on_cpus(&cpus.0)
    {
        let list: Vec<String> = cpus.0.iter().map(|c| c.to_string()).collect();
        let why = match e.raw_os_error() {
            Some(libc::EINVAL) => "this machine has none of them".to_string(),
            _ => e.to_string(),
        };
        fail(&format!("cannot run on CPUs {}: {why}", list.join(",")));
    }
    match cli.command {
        Command::Launch(args) if args.cluster.is_some() => {
            std::process::exit(home::launch_at_home(&args, process_start))
        }
        Command::Launch(args) => {
            let config = args.to_config();
            match vmm::launch(&args.image, &config, process_start) {
                Ok(outcome) => {
                    if let vmm::Outcome::Error(message) = &outcome {
                        eprintln!("popvmm: error: {message}");
                    }
                    // Exit right away: vCPU threads may still be parked, and guest output was
                    // written unbuffered already.
                    std::process::exit(outcome.status())
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Node(args) => match node::daemon::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Peers(t) => print(node::client::peers(&t)),
        Command::Stat(a) => print(node::client::stat(&a)),
        Command::Ping(a) => print(node::client::ping(&a)),
        Command::Ps(a) => print(node::client::ps(&a)),
        Command::Migrate(a) => print(node::client::migrate(&a)),
    }
}

/// Prints a client's output, or fails with its error.
fn print(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// The first paragraph of a clap error on one line, without its `error: ` prefix.
fn first_line(text: &str) -> String {
    let paragraph: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = paragraph.join(" ");
    match line.strip_prefix("error: ") {
        Some(rest) => rest.to_string(),
        None if line.is_empty() => "invalid command line".to_string(),
        None => line,
    }
}

/// Reports `message` as one line and exits with [`EXIT_VMM_ERROR`].
fn fail(message: &str) -> ! {
    eprintln!("popvmm: error: {}", message.replace('\n', " "));
    std::process::exit(EXIT_VMM_ERROR)
}
