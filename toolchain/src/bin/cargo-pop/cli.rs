//! The command line of `cargo pop`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pop_toolchain::{ArchSelection, BuildOptions, Result};

/// Build Rust std applications into popvmm images, linked with the pop library OS.
#[derive(Debug, Parser)]
#[command(name = "cargo pop", bin_name = "cargo pop", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build images of a std crate (no change to its source or Cargo.toml needed)
    ///
    /// Builds the libos, then the crate for `<arch>-unknown-hermit` with the libos and the
    /// image linker script linked in, and prints the path of each image, one per line, on
    /// stdout. Cargo's progress goes to stderr.
    Build(BuildArgs),
    /// Check an aligned image pair (built with `--arch all`)
    ///
    /// Checks that everything application state can point at is at the same address in
    /// the x86-64 and the aarch64 image of one program, with the same size and bytes, and
    /// that their TLS templates and shared data have one layout; and that no type the
    /// application holds has another layout or meaning on the other ISA (from DWARF: std's
    /// HashMap/HashSet, 128-bit atomics, types under `cfg(target_arch)`). Reads each
    /// image's link map from `IMAGE.map` beside it. Prints one line and exits 0 if the
    /// pair lines up and can cross; else names what does not and exits 1.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The two images, in either order
    #[arg(value_name = "IMAGE", num_args = 2, required = true)]
    images: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Build with the release profile
    #[arg(short, long)]
    release: bool,

    /// Architecture to build for: x86_64, aarch64 or all
    #[arg(long, value_name = "ARCH", default_value = "x86_64")]
    arch: String,

    /// Package to build (may be repeated)
    #[arg(short, long = "package", value_name = "SPEC")]
    package: Vec<String>,

    /// Path to the crate's Cargo.toml
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<PathBuf>,

    /// More arguments for `cargo build`, after `--` (e.g. `-- --bin NAME --features F`)
    #[arg(last = true, value_name = "CARGO_ARGS")]
    cargo_args: Vec<OsString>,
}

impl Cli {
    /// Carries out the command.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Build(args) => build(args),
            Command::Verify(args) => verify(args),
        }
    }
}

fn verify(args: VerifyArgs) -> Result<()> {
    let [a, b] = &args.images[..] else {
        unreachable!("clap asks for two images")
    };
    let report = pop_toolchain::align::verify::verify_either(a, b)?;
    report.crossable()?;
    println!("aligned: {report}");
    Ok(())
}

fn build(args: BuildArgs) -> Result<()> {
    let options = BuildOptions {
        release: args.release,
        arch: args.arch.parse::<ArchSelection>()?,
        packages: args.package,
        manifest_path: args.manifest_path,
        cargo_args: args.cargo_args,
        ..BuildOptions::default()
    };
    let images = pop_toolchain::build(&options)?;
    let mut stdout = std::io::stdout().lock();
    for image in images {
        // A closed stdout (e.g. `| head -1`) is not a build failure.
        let _ = writeln!(stdout, "{}", image.display());
    }
    Ok(())
}

/// Cargo runs an external subcommand as `cargo-pop pop ARGS...`; drops that `pop` so that
/// `cargo-pop ARGS...` run directly works the same.
pub fn args_without_subcommand_name(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "pop") {
        args.remove(1);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cargo_subcommand_name_is_skipped() {
        let args = args_without_subcommand_name(["cargo-pop", "pop", "build"].map(OsString::from));
        assert_eq!(args, ["cargo-pop", "build"]);
        let args = args_without_subcommand_name(["cargo-pop", "build"].map(OsString::from));
        assert_eq!(args, ["cargo-pop", "build"]);
    }

    #[test]
    fn build_arguments_parse() {
        let cli = Cli::parse_from([
            "cargo-pop",
            "build",
            "--release",
            "--arch",
            "all",
            "-p",
            "a",
            "-p",
            "b",
            "--",
            "--bin",
            "x",
        ]);
        let Command::Build(args) = cli.command else {
            panic!("not a build")
        };
        assert!(args.release);
        assert_eq!(args.arch, "all");
        assert_eq!(args.package, ["a", "b"]);
        assert_eq!(args.cargo_args, ["--bin", "x"]);
    }
}
