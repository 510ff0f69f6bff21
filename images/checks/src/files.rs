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

/// Uses `std::env::temp_dir()` as a program would: writes a file and a directory with a
/// file in it, reads them back, lists the directory, removes what it made; prints each step.
pub fn scratch() {
    let tmp = std::env::temp_dir();
    println!("temp_dir: {}", tmp.display());
    let run = || -> std::io::Result<()> {
        let file = tmp.join("hello.txt");
        std::fs::write(&file, "hello from the guest\n")?;
        print!("read back: {}", std::fs::read_to_string(&file)?);
        std::fs::create_dir_all(tmp.join("work/deeper"))?;
        std::fs::write(tmp.join("work/deeper/n"), 42u64.to_le_bytes())?;
        let n = u64::from_le_bytes(
            std::fs::read(tmp.join("work/deeper/n"))?
                .try_into()
                .unwrap(),
        );
        println!("number: {n}");
        let mut names: Vec<String> = std::fs::read_dir(&tmp)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        println!("listed: {}", names.join(" "));
        // (std's `remove_dir_all` is not there on the hermit targets.)
        for (what, r) in [
            (
                "remove work/deeper/n",
                std::fs::remove_file(tmp.join("work/deeper/n")),
            ),
            (
                "remove work/deeper",
                std::fs::remove_dir(tmp.join("work/deeper")),
            ),
            ("remove work", std::fs::remove_dir(tmp.join("work"))),
            ("remove hello.txt", std::fs::remove_file(&file)),
        ] {
            r.map_err(|e| std::io::Error::new(e.kind(), format!("{what}: {e}")))?;
        }
        // (Not by listing: std for the hermit targets takes an empty directory's listing
        // for an error.)
        let left = ["hello.txt", "work"]
            .iter()
            .filter(|n| tmp.join(n).exists())
            .count();
        println!("left: {left}");
        Ok(())
    };
    if let Err(e) = run() {
        fail(e)
    }
}

fn fail(e: std::io::Error) -> ! {
    println!("error: {e}");
    std::process::exit(1)
}
