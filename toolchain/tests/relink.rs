//! Cargo does not know that an image depends on the libos object: `cargo pop build` must
//! relink an image older than `libos.o`. Builds `images/hello` (see `image_layout.rs`).

use std::fs::File;
use std::time::{Duration, SystemTime};

use pop_toolchain::{BuildOptions, repo};

fn build_hello() -> std::path::PathBuf {
    let options = BuildOptions {
        packages: vec!["hello".into()],
        manifest_path: Some(repo::default_root().join("images/Cargo.toml")),
        ..BuildOptions::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build of images/hello");
    images.into_iter().next().expect("one image")
}

fn mtime(path: &std::path::Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn image_older_than_the_libos_is_relinked() {
    let image = build_hello();
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();

    let rebuilt = build_hello();
    assert_eq!(rebuilt, image);
    let libos = repo::RepoPaths::new(repo::root())
        .link_dir(pop_toolchain::Arch::X86_64)
        .join("libos.o");
    assert!(
        mtime(&rebuilt) >= mtime(&libos),
        "the image was not relinked"
    );
}
