//! Reading `rust-lld`'s link map (`-Map`): every input section with its output section,
//! address, size and alignment.

use crate::error::{Error, Result};

/// One input section as the map lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSection {
    /// The output section it went into (`.text`, `.rodata`, ...).
    pub out: String,
    /// The file it came from: `path` or `archive(member)`.
    pub file: String,
    /// Its name in that file (`.text._RNv...`).
    pub name: String,
    /// Its address in the image.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its alignment.
    pub align: u64,
}

/// The four number columns (VMA, LMA, size, alignment) of a map line and the text after
/// them (its indentation kept), or `None` for a line without them.
fn columns(line: &str) -> Option<([&str; 4], &str)> {
    let mut fields = [""; 4];
    let mut rest = line;
    for field in &mut fields {
        let start = rest.len() - rest.trim_start_matches(' ').len();
        let token = rest[start..].split(' ').next()?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *field = token;
        rest = &rest[start + token.len()..];
    }
    Some((fields, rest.strip_prefix(' ')?))
}

/// The input sections of the map, in address order within each output section.
pub fn parse(text: &str) -> Result<Vec<InputSection>> {
    let mut sections = Vec::new();
    let mut out = String::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = || Error::UnexpectedOutput(format!("link map line {}: {line:?}", n + 1));
        // Four number columns (lld widens one whose value does not fit), one space, then
        // the indented text: none for an output section, 8 for an input, 16 for a symbol.
        let Some((fields, rest)) = columns(line) else {
            continue;
        };
        let [vma, _lma, size, align] = fields;
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
        if let Some(input) = rest.strip_prefix("        ") {
            if input.starts_with(' ') {
                continue; // a symbol
            }
            // `file:(section)`; the file may itself hold `:` or parentheses.
            let Some(split) = input.rfind(":(") else {
                continue; // e.g. a linker-script assignment
            };
            let file = &input[..split];
            let name = input[split + 2..].strip_suffix(')').ok_or_else(bad)?;
            sections.push(InputSection {
                out: out.clone(),
                file: file.to_owned(),
                name: name.to_owned(),
                addr: hex(vma)?,
                size: hex(size)?,
                align: align.parse().map_err(|_| bad())?,
            });
        } else if rest.starts_with('.') && !rest.contains(' ') {
            out = rest.to_owned();
        } else {
            out.clear();
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sections_are_read_with_their_output_section() {
        let map = "             VMA              LMA     Size Align Out     In      Symbol
          400000           400000     b5be    16 .text
          400000           400000        d     1         /p/libos.o:(.text._start)
          400000           400000        d     1                 _start
          400010           400010       43    16         /p/libstd-1.rlib(std-1.cgu.03.rcgu.o):(.text.unlikely._RNvC1a)
          40b5be           40b5be      a42     1 . = ALIGN(0x1000)
          40c000           40c000     7366    16 .rodata
          40c000           40c000       30     8         /p/h.rcgu.o:(.rodata..Lanon.aa.0)
";
        let s = parse(map).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].out, ".text");
        assert_eq!(s[0].file, "/p/libos.o");
        assert_eq!(s[0].name, ".text._start");
        assert_eq!((s[0].addr, s[0].size, s[0].align), (0x400000, 0xd, 1));
        assert_eq!(s[1].file, "/p/libstd-1.rlib(std-1.cgu.03.rcgu.o)");
        assert_eq!(s[1].name, ".text.unlikely._RNvC1a");
        assert_eq!(
            (s[2].out.as_str(), s[2].addr, s[2].align),
            (".rodata", 0x40c000, 8)
        );
    }
}
