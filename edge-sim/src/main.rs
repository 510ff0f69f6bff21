//! `edge-sim`: the command-line front end of the simulated aarch64 edge board.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edge_sim::{EdgeSim, GuestCommand, Options};

/// Exit status when edge-sim itself fails (as popvmm's 125).
const EXIT_ERROR: u8 = 125;

/// A simulated aarch64 edge board: Debian's arm64 Linux under qemu-system-aarch64 (TCG, with
/// working nested KVM), for running popvmm built for aarch64-unknown-linux-musl and its images.
///
/// The first start downloads Debian's arm64 kernel and busybox (apt, as root; QEMU is
/// installed with apt too) and builds an initramfs: about 10 s. Later starts reuse the cache
/// (~/.cache/popcorn-rs/edge-sim, or $EDGE_SIM_CACHE) and spend their time booting: about 7 s
/// on an idle 2-core machine.
///
/// Files given with --payload are in the board under /payload (read-only, on PATH).
/// The board reaches the host's 127.0.0.1 at 10.0.2.2 and nothing else; host ports given
/// by --forward reach the board through 127.0.0.1 only.
#[derive(Parser)]
#[command(name = "edge-sim", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

const EXAMPLES: &str = "\
Examples:
  edge-sim run --payload target/aarch64-unknown-linux-musl/release/popvmm \\
      --payload images/hello -- popvmm launch /payload/hello
  edge-sim start --payload target/aarch64-unknown-linux-musl/release/popvmm --forward 8080
  edge-sim run -b default -- cat /proc/cpuinfo
  edge-sim put target/aarch64-unknown-linux-musl/release/popvmm
  edge-sim stop
  edge-sim cargo-build -p popvmm --bin popvmm   # -> target/aarch64-unknown-linux-musl/release/popvmm";

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a board and exit with its status: in a new board that is shut down
    /// afterwards, or in a running one with --board.
    Run(RunArgs),
    /// Boot a board that keeps running in the background, for many `run -b NAME` commands.
    Start(StartArgs),
    /// Stop a board started with `start`.
    Stop(NameArg),
    /// Show whether a board started with `start` runs, and its ports.
    Status(NameArg),
    /// Put a file or directory into a running board's /payload.
    Put(PutArgs),
    /// Forward a new host port (127.0.0.1) to a port of a running board; prints the host port.
    Forward(ForwardArgs),
    /// Download and build the cached kernel, modules and initramfs without booting.
    Prepare(PrepareArgs),
    /// Build static aarch64-unknown-linux-musl binaries for a board (e.g. popvmm):
    /// `cargo build --release --target aarch64-unknown-linux-musl ARGS`, with the flags the
    /// pinned nightly needs (std from source, Debian's arm64 musl C runtime).
    CargoBuild(CargoBuildArgs),
}

#[derive(Args)]
struct CargoBuildArgs {
    /// Arguments for cargo build, e.g. `-p popvmm --bin popvmm`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CARGO ARGS"
    )]
    args: Vec<String>,
}

#[derive(Args)]
struct BootArgs {
    /// File or directory for /payload, as PATH or PATH:NAME (repeatable).
    #[arg(short, long = "payload", value_name = "PATH[:NAME]")]
    payload: Vec<String>,
    /// Guest TCP port to forward from a free host port on 127.0.0.1 (repeatable).
    #[arg(short, long = "forward", value_name = "GUEST_PORT")]
    forward: Vec<u16>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Seconds to wait for the board to boot.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Never install packages; fail with the command to run instead.
    #[arg(long)]
    no_install: bool,
}

impl BootArgs {
    fn options(&self) -> Result<Options, String> {
        let mut payload = Vec::new();
        for spec in &self.payload {
            let (path, name) = match spec.rsplit_once(':') {
                Some((p, n)) if !n.is_empty() && !n.contains('/') => {
                    (PathBuf::from(p), n.to_string())
                }
                _ => {
                    let path = PathBuf::from(spec);
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| format!("--payload {spec}: no file name"))?
                        .to_string();
                    (path, name)
                }
            };
            if !path.exists() {
                return Err(format!(
                    "--payload {spec}: {} does not exist",
                    path.display()
                ));
            }
            payload.push((path, name));
        }
        Ok(Options {
            payload,
            forwards: self.forward.clone(),
            cpus: self.cpus,
            memory_mib: self.memory,
            boot_timeout: Duration::from_secs(self.boot_timeout),
            cache_dir: None,
            install: !self.no_install,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    boot: BootArgs,
    /// Run in the running board NAME (see `start`) instead of booting a new one.
    #[arg(short, long, value_name = "NAME")]
    board: Option<String>,
    /// Kill the command after this many seconds (its status is then 137).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Feed this file to the command's stdin ("-" for edge-sim's own stdin).
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Print setup and boot times to stderr.
    #[arg(long)]
    timings: bool,
    /// The command and its arguments, run as-is (no shell) in the board.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
struct StartArgs {
    #[command(flatten)]
    boot: BootArgs,
    /// Name of the board.
    #[arg(short, long, default_value = "default")]
    name: String,
}

#[derive(Args)]
struct NameArg {
    /// Name of the board.
    #[arg(short, long, default_value = "default")]
    name: String,
}

#[derive(Args)]
struct PutArgs {
    /// Name of the board.
    #[arg(short, long, default_value = "default")]
    name: String,
    /// PATH or PATH:NAME to put into /payload.
    #[arg(required = true, value_name = "PATH[:NAME]")]
    paths: Vec<String>,
}

#[derive(Args)]
struct ForwardArgs {
    /// Name of the board.
    #[arg(short, long, default_value = "default")]
    name: String,
    /// The board's TCP port.
    guest_port: u16,
}

#[derive(Args)]
struct PrepareArgs {
    /// Start over with the newest Debian kernel and busybox.
    #[arg(long)]
    refresh: bool,
    /// Never install packages.
    #[arg(long)]
    no_install: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("bad arguments");
            eprintln!("edge-sim: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_ERROR);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("edge-sim: error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn dispatch(command: Cmd) -> Result<ExitCode, String> {
    let e = |e: edge_sim::Error| e.to_string();
    match command {
        Cmd::Run(args) => run(args),
        Cmd::Start(args) => {
            let board = EdgeSim::start_detached(&args.boot.options()?, &args.name).map_err(e)?;
            let t = board.timings();
            println!("board {} running (QEMU pid {})", args.name, board.pid());
            println!(
                "setup {:.2} s, boot {:.2} s",
                t.setup.as_secs_f64(),
                t.boot.as_secs_f64()
            );
            print_ports(&board);
            println!("console log: {}", board.console_log().display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop(args) => {
            EdgeSim::attach(None, &args.name).map_err(e)?.stop();
            println!("board {} stopped", args.name);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status(args) => match EdgeSim::attach(None, &args.name) {
            Ok(board) => {
                println!("board {} running (QEMU pid {})", args.name, board.pid());
                print_ports(&board);
                println!("console log: {}", board.console_log().display());
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                println!("{err}");
                Ok(ExitCode::from(1))
            }
        },
        Cmd::Put(args) => {
            let board = EdgeSim::attach(None, &args.name).map_err(e)?;
            let specs = BootArgs {
                payload: args.paths,
                forward: Vec::new(),
                cpus: 0,
                memory: 0,
                boot_timeout: 0,
                no_install: true,
            };
            for (path, name) in specs.options()?.payload {
                board.add_payload(&path, &name).map_err(e)?;
                println!("/payload/{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Forward(args) => {
            let board = EdgeSim::attach(None, &args.name).map_err(e)?;
            println!("{}", board.forward(args.guest_port).map_err(e)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CargoBuild(args) => {
            let recipe = edge_sim::musl::Recipe::for_dir(Path::new("."), None, true).map_err(e)?;
            let status = recipe
                .cargo_build_here()
                .args(&args.args)
                .status()
                .map_err(|err| format!("running cargo: {err}"))?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
            })
        }
        Cmd::Prepare(args) => {
            let base = edge_sim::prepare(None, !args.no_install, args.refresh).map_err(e)?;
            println!("kernel {} ({})", base.kernel.display(), base.kernel_package);
            println!("initramfs {}", base.initramfs.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_ports(board: &EdgeSim) {
    println!("agent 127.0.0.1:{}", board.agent_addr().port());
    for (guest, host) in board.forwards() {
        println!("forward 127.0.0.1:{host} -> board port {guest}");
    }
    println!(
        "the board reaches the host's 127.0.0.1 at {}",
        edge_sim::HOST_FROM_GUEST
    );
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let e = |e: edge_sim::Error| e.to_string();
    let stdin = match &args.stdin {
        None => Vec::new(),
        Some(p) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|err| format!("reading stdin: {err}"))?;
            buf
        }
        Some(p) => std::fs::read(p).map_err(|err| format!("reading {}: {err}", p.display()))?,
    };
    let board = match &args.board {
        Some(name) => {
            let board = EdgeSim::attach(None, name).map_err(e)?;
            for (path, pname) in args.boot.options()?.payload {
                board.add_payload(&path, &pname).map_err(e)?;
            }
            board
        }
        None => EdgeSim::start(&args.boot.options()?).map_err(e)?,
    };
    if args.timings {
        let t = board.timings();
        eprintln!(
            "edge-sim: setup {:.2} s{}, boot {:.2} s",
            t.setup.as_secs_f64(),
            if t.cache_built { " (cache built)" } else { "" },
            t.boot.as_secs_f64()
        );
    }
    let cmd = GuestCommand::new(&args.command)
        .stdin(stdin)
        .timeout(Duration::from_secs(args.timeout));
    let out = board.run_with(&cmd).map_err(e)?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out.stdout);
    let _ = stdout.flush();
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(&out.stderr);
    let _ = stderr.flush();
    drop(board);
    Ok(ExitCode::from(out.status.clamp(0, 255) as u8))
}
