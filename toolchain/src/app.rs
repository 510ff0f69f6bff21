//! Building the application itself, with the libos and the linker script linked in.
//!
//! The extra rustc flags go in through `--config target.<triple>.rustflags=[...]`, so they
//! join the application's own cargo configuration instead of replacing it. They are the
//! same bytes on every run, so cargo never rebuilds `std` because of them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::messages::Message;
use crate::options::BuildOptions;
use crate::toolchain::Toolchain;

/// The rustc flags that keep the code of both ISAs pairable (see [`crate::align`]), for the
/// application, its std and the libos alike: symbol names that carry their full path, no
/// functions merged into one another, no globals merged into one (aarch64's GlobalMerge).
pub const PAIRING_FLAGS: [&str; 3] = [
    "-Csymbol-mangling-version=v0",
    "-Zmerge-functions=disabled",
    "-Cllvm-args=-aarch64-enable-global-merge=false",
];

/// What the application is linked with.
#[derive(Clone, Debug)]
pub struct LinkInputs {
    /// The prelinked libos object.
    pub libos: PathBuf,
    /// The linker script.
    pub script: PathBuf,
    /// The linker wrapper ([`crate::link::wrapper`]).
    pub linker: PathBuf,
    /// Where the wrapper records links.
    pub links: PathBuf,
}

impl LinkInputs {
    /// The rustc flags that link an application for `popvmm`: fixed addresses (static
    /// relocation model, so the image is an `ET_EXEC`), frame pointers (for backtraces of
    /// faults), what keeps the two architectures' builds pairable (the same flags on both:
    /// symbol names that carry their full path, no merged functions, no merged globals on
    /// aarch64; see [`crate::align`]), the linker wrapper, the linker script and the libos.
    pub fn rustflags(&self) -> Result<Vec<String>> {
        Ok(vec![
            "-Crelocation-model=static".to_owned(),
            "-Cforce-frame-pointers=yes".to_owned(),
            PAIRING_FLAGS[0].to_owned(),
            PAIRING_FLAGS[1].to_owned(),
            PAIRING_FLAGS[2].to_owned(),
            format!("-Clinker={}", utf8(&self.linker)?),
            format!("-Clink-arg=-T{}", utf8(&self.script)?),
            format!("-Clink-arg={}", utf8(&self.libos)?),
        ])
    }
}

/// Builds the application for `arch` and returns the images cargo reported.
///
/// Cargo does not know that an image depends on `libos.o` and the linker script, so an
/// image older than either is deleted (with its copy in `deps/`) and cargo is run again,
/// which relinks just those binaries.
pub fn build(
    toolchain: &Toolchain,
    options: &BuildOptions,
    arch: Arch,
    inputs: &LinkInputs,
) -> Result<Vec<PathBuf>> {
    let flags = inputs.rustflags()?;
    let images = run_cargo(toolchain, options, arch, &flags, &inputs.links)?;
    let newest_input = [&inputs.libos, &inputs.script, &inputs.linker]
        .into_iter()
        .filter_map(|p| fsutil::mtime(p))
        .max();
    let stale: Vec<&PathBuf> = images
        .iter()
        .filter(|image| fsutil::mtime(image) < newest_input)
        .collect();
    if stale.is_empty() {
        return Ok(images);
    }
    for image in stale {
        remove_image(image)?;
    }
    run_cargo(toolchain, options, arch, &flags, &inputs.links)
}

/// Runs `cargo build` for the application and collects the executables it reports.
fn run_cargo(
    toolchain: &Toolchain,
    options: &BuildOptions,
    arch: Arch,
    flags: &[String],
    links: &Path,
) -> Result<Vec<PathBuf>> {
    let mut cargo = toolchain.cargo_command();
    cargo.args(cargo_args(options, arch, flags));
    cargo.env(crate::link::wrapper::LINK_DIR_ENV, links);
    apply_env_rustflags(&mut cargo, flags);
    if let Some(dir) = &options.current_dir {
        cargo.current_dir(dir);
    }
    cargo.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cargo.spawn().map_err(|source| Error::Spawn {
        program: "cargo".to_owned(),
        source,
    })?;
    let mut images = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| Error::io("cargo's output", e))?;
            match Message::parse(&line) {
                Message::Executable { path, .. } if !images.contains(&path) => images.push(path),
                Message::Text => eprintln!("{line}"),
                _ => {}
            }
        }
    }
    let status = child.wait().map_err(|e| Error::io("cargo", e))?;
    if !status.success() {
        return Err(Error::Failed {
            what: format!("building the application for {arch}"),
            status,
        });
    }
    Ok(images)
}

/// The arguments of the application's `cargo build`.
pub fn cargo_args(options: &BuildOptions, arch: Arch, flags: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["build".into()];
    if options.release {
        args.push("--release".into());
    }
    args.extend(
        [
            "--target",
            arch.triple(),
            "-Zbuild-std=std,panic_abort",
            "-Zbuild-std-features=compiler-builtins-mem",
            "--message-format=json-render-diagnostics",
        ]
        .map(OsString::from),
    );
    for package in &options.packages {
        args.push("-p".into());
        args.push(package.into());
    }
    if let Some(manifest) = &options.manifest_path {
        args.push("--manifest-path".into());
        args.push(manifest.into());
    }
    args.push("--config".into());
    args.push(rustflags_config(arch, flags).into());
    args.extend(options.cargo_args.iter().cloned());
    args
}

/// The `--config` value `target.<triple>.rustflags=[...]` carrying `flags`.
pub fn rustflags_config(arch: Arch, flags: &[String]) -> String {
    let list: Vec<String> = flags.iter().map(|f| toml_string(f)).collect();
    format!("target.{}.rustflags=[{}]", arch.triple(), list.join(","))
}

/// `RUSTFLAGS` and `CARGO_ENCODED_RUSTFLAGS` override every configured rustflags; if the
/// user set one, our flags are appended to it instead.
fn apply_env_rustflags(cargo: &mut Command, flags: &[String]) {
    let user: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(encoded) if !encoded.is_empty() => encoded.split('\x1f').map(str::to_owned).collect(),
        _ => match std::env::var("RUSTFLAGS") {
            Ok(plain) if !plain.trim().is_empty() => {
                plain.split_whitespace().map(str::to_owned).collect()
            }
            _ => return,
        },
    };
    let all: Vec<&str> = user.iter().chain(flags).map(String::as_str).collect();
    cargo
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", all.join("\x1f"));
}

/// Deletes `image` and the file it was uplifted from in `deps/` (the same inode), so that
/// cargo relinks it.
fn remove_image(image: &Path) -> Result<()> {
    if let Some(path) = fsutil::uplifted_from(image) {
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    std::fs::remove_file(image).map_err(|e| Error::io(image, e))
}

/// `path` as UTF-8, for a rustc flag.
fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::NonUtf8Path(path.to_path_buf()))
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> LinkInputs {
        LinkInputs {
            libos: PathBuf::from("/r/target/pop/x86_64-unknown-hermit/libos.o"),
            script: PathBuf::from("/r/target/pop/x86_64-unknown-hermit/link.ld"),
            linker: PathBuf::from("/r/target/pop/x86_64-unknown-hermit/pop-ld"),
            links: PathBuf::from("/r/target/pop/x86_64-unknown-hermit/links"),
        }
    }

    #[test]
    fn rustflags_go_into_one_config_value() {
        let flags = inputs().rustflags().unwrap();
        assert_eq!(
            rustflags_config(Arch::X86_64, &flags),
            "target.x86_64-unknown-hermit.rustflags=[\"-Crelocation-model=static\",\
             \"-Cforce-frame-pointers=yes\",\
             \"-Csymbol-mangling-version=v0\",\
             \"-Zmerge-functions=disabled\",\
             \"-Cllvm-args=-aarch64-enable-global-merge=false\",\
             \"-Clinker=/r/target/pop/x86_64-unknown-hermit/pop-ld\",\
             \"-Clink-arg=-T/r/target/pop/x86_64-unknown-hermit/link.ld\",\
             \"-Clink-arg=/r/target/pop/x86_64-unknown-hermit/libos.o\"]"
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ty"), r#""x\u0009y""#);
    }

    #[test]
    fn cargo_args_pass_the_user_selection() {
        let options = BuildOptions {
            release: true,
            packages: vec!["hello".into(), "checks".into()],
            manifest_path: Some(PathBuf::from("images/Cargo.toml")),
            cargo_args: vec!["--bin".into(), "hello".into()],
            ..BuildOptions::default()
        };
        let args = cargo_args(&options, Arch::X86_64, &[]);
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "build",
                "--release",
                "--target",
                "x86_64-unknown-hermit",
                "-Zbuild-std=std,panic_abort",
                "-Zbuild-std-features=compiler-builtins-mem",
                "--message-format=json-render-diagnostics",
                "-p",
                "hello",
                "-p",
                "checks",
                "--manifest-path",
                "images/Cargo.toml",
                "--config",
                "target.x86_64-unknown-hermit.rustflags=[]",
                "--bin",
                "hello",
            ]
        );
    }
}
