//! Files and directories (rename is not part of the hermit ABI, so it is left out).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// Works in a new directory `pop-stdtour` inside `base` and removes it at the end.
pub fn tour(base: &Path) {
    if let Err(e) = run(&base.join("pop-stdtour")) {
        println!("files: error: {:?}", e.kind());
    }
}

fn run(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        // Left over from an interrupted run.
        for entry in fs::read_dir(dir)? {
            fs::remove_file(entry?.path())?;
        }
        fs::remove_dir(dir)?;
    }
    fs::create_dir(dir)?;
    println!("files: created directory");

    let a = dir.join("a.txt");
    fs::write(&a, "hello")?;
    println!("files: read back: {:?}", fs::read_to_string(&a)?);
    let mut file = OpenOptions::new().append(true).open(&a)?;
    file.write_all(b", world\n")?;
    drop(file);
    println!("files: after append: {:?}", fs::read_to_string(&a)?);
    println!(
        "files: metadata len = {} is_file = {}",
        fs::metadata(&a)?.len(),
        a.is_file()
    );

    let mut partial = [0u8; 5];
    fs::File::open(&a)?.read_exact(&mut partial)?;
    println!(
        "files: first bytes: {:?}",
        String::from_utf8_lossy(&partial)
    );

    fs::write(dir.join("c.bin"), [0u8, 1, 2, 3])?;
    fs::write(dir.join("b.txt"), "bee")?;
    let mut names: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    println!("files: directory holds {names:?}");

    match fs::File::open(dir.join("missing")) {
        Ok(_) => println!("files: missing file opened?!"),
        Err(e) => println!("files: open missing: {:?}", e.kind()),
    }
    println!(
        "files: remove non-empty directory fails: {}",
        fs::remove_dir(dir).is_err()
    );

    for name in &names {
        fs::remove_file(dir.join(name))?;
    }
    println!("files: exists after remove_file: {}", a.exists());
    fs::remove_dir(dir)?;
    println!("files: directory removed: {}", !dir.exists());
    Ok(())
}
