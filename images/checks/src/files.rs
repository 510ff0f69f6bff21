//! Reading and writing one file.

/// Prints the contents of `path`, or `error: ...` and exits with 1.
pub fn read(path: &str) {
    match std::fs::read_to_string(path) {
        Ok(text) => print!("{text}"),
        Err(e) => fail(e),
    }
}

/// Writes `text` to `path` and prints `wrote N bytes`, or `error: ...` and exits with 1.
pub fn write(path: &str, text: &str) {
    match std::fs::write(path, text) {
        Ok(()) => println!("wrote {} bytes", text.len()),
        Err(e) => fail(e),
    }
}

fn fail(e: std::io::Error) -> ! {
    println!("error: {e}");
    std::process::exit(1)
}
