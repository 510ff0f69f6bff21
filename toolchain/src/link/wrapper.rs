//! `pop-ld`: the linker rustc runs for images, which keeps what it takes to link again.
//!
//! Aligning an image pair needs both architectures' images linked once, then each linked
//! again with a linker script that places every shared symbol where the other image has it
//! ([`crate::align`]). Rustc deletes the objects of the crate it links (they live in
//! temporary files), so `cargo pop` makes rustc link through a small script it writes
//! ([`write()`]): with [`LINK_DIR_ENV`] set, it copies the objects of each link into a
//! directory of their own, records the arguments, and links twice with `rust-lld`: the
//! image cargo asked for, and the same image with its relocations kept and a link map (the
//! inputs of the alignment). Both links run with string and constant merging off (`-O0`):
//! merged, the constants of many crates fold into one input and cannot be placed apart.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::fsutil;

/// File name of the wrapper, next to the linker script.
pub const WRAPPER_NAME: &str = "pop-ld";
/// Environment variable naming the directory where links are recorded.
pub const LINK_DIR_ENV: &str = "POP_LINK_DIR";

/// The wrapper (POSIX sh); `@LLD@` stands for the path of `rust-lld`.
const SCRIPT: &str = r#"#!/bin/sh
# The linker of popvmm images (written by cargo pop): links with rust-lld, and with
# POP_LINK_DIR set records the link (objects, arguments, an image with relocations and
# its map) so that cargo pop can link it again aligned with its other-ISA twin.
lld='@LLD@'
# rustc names the flavor only when it runs a linker called rust-lld.
case "$1" in -flavor) ;; *) set -- -flavor gnu "$@" ;; esac
out=; prev=
for a in "$@"; do [ "$prev" = "-o" ] && out=$a; prev=$a; done
if [ -z "$POP_LINK_DIR" ]; then exec "$lld" "$@" -O0; fi
if [ -z "$out" ]; then
    echo "pop-ld: cannot record a link without -o (arguments in a response file?)" >&2
    exit 1
fi
dir="$POP_LINK_DIR/$(basename "$out")"
rm -rf "$dir" && mkdir -p "$dir" || exit 1
: > "$dir/args"
n=$#
for a in "$@"; do
    case "$a" in
        *"
"*) echo "pop-ld: an argument holds a newline" >&2; exit 1 ;;
        # The crate's own objects and what rustc made for this link in its temporary
        # directory go when rustc is done: keep copies.
        *.o | */rustc*/*.rlib | */rustc*/*.a)
            if [ ! -f "$a" ]; then echo "pop-ld: no such input: $a" >&2; exit 1; fi
            cp "$a" "$dir/" || exit 1
            a="$dir/$(basename "$a")" ;;
    esac
    printf '%s
' "$a" >> "$dir/args"
    set -- "$@" "$a"
done
shift $n
"$lld" "$@" -O0 || exit $?
n=$#; prev=
for a in "$@"; do
    b=$a
    [ "$prev" = "-o" ] && b="$dir/natural.elf"
    set -- "$@" "$b"
    prev=$a
done
shift $n
exec "$lld" "$@" -O0 --emit-relocs "-Map=$dir/natural.map"
"#;

/// Writes the wrapper running `lld` into `dir` (only if its contents changed) and returns
/// its path.
pub fn write(dir: &Path, lld: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let lld = lld
        .to_str()
        .filter(|s| !s.contains('\''))
        .ok_or_else(|| Error::NonUtf8Path(lld.to_path_buf()))?;
    let path = dir.join(WRAPPER_NAME);
    fsutil::write_if_changed(&path, SCRIPT.replace("@LLD@", lld).as_bytes())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// File of a recorded link holding its arguments, one a line.
const ARGS: &str = "args";
/// The image the recorded link produced.
pub const NATURAL_IMAGE: &str = "natural.elf";
/// Its link map.
pub const NATURAL_MAP: &str = "natural.map";

/// One link as the wrapper recorded it: linking again reproduces it with another script.
#[derive(Clone, Debug)]
pub struct LinkRecord {
    /// Its directory (copied objects, arguments, the natural image and map).
    pub dir: PathBuf,
    /// The arguments rustc gave, with the objects pointing at the copies.
    pub args: Vec<OsString>,
}

impl LinkRecord {
    /// Reads the record of the link that produced the file named `output`.
    pub fn load(links: &Path, output: &str) -> Result<LinkRecord> {
        let dir = links.join(output);
        let path = dir.join(ARGS);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let args = bytes
            .split(|&b| b == b'\n')
            .filter(|a| !a.is_empty())
            .map(|a| {
                use std::os::unix::ffi::OsStrExt;
                std::ffi::OsStr::from_bytes(a).to_owned()
            })
            .collect();
        Ok(LinkRecord { dir, args })
    }

    /// The image of the recorded link.
    pub fn natural_image(&self) -> PathBuf {
        self.dir.join(NATURAL_IMAGE)
    }

    /// Its map.
    pub fn natural_map(&self) -> PathBuf {
        self.dir.join(NATURAL_MAP)
    }

    /// Links again with `script` instead of the image script, into `output`, writing its
    /// map to `map`.
    pub fn relink(&self, lld: &Path, script: &Path, output: &Path, map: &Path) -> Result<()> {
        let mut args: Vec<OsString> = with_output(&self.args, output)
            .into_iter()
            .map(|a| match a.to_str() {
                Some(s) if s.starts_with("-T") => format!("-T{}", script.display()).into(),
                _ => a,
            })
            .collect();
        args.push("-O0".into());
        args.push(format!("-Map={}", map.display()).into());
        let mut cmd = Command::new(lld);
        cmd.args(&args);
        crate::process::run(&mut cmd, "linking the aligned image (rust-lld)")
    }
}

/// `args` with the `-o` value replaced by `output`.
fn with_output(args: &[OsString], output: &Path) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a == "-o" {
            it.next();
            out.push(output.into());
        }
    }
    out
}
