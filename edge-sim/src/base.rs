//! The board's base files, built once and cached: Debian's arm64 kernel image, the kernel
//! modules the board loads, busybox, and the initramfs made of them.
//!
//! Layout under the cache directory:
//! - `debs/`: the downloaded `.deb` files;
//! - `base/Image`, `base/busybox`, `base/modules/NAME.ko`, `base/manifest` (written last);
//! - `base/initramfs-KEY.cpio`, keyed by a hash of everything that goes into it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{CacheLock, fnv1a, write_atomic};
use crate::cpio::CpioWriter;
use crate::error::{Error, Result};
use crate::host;
use crate::modules;

/// The guest port of the command agent.
pub const AGENT_PORT: u16 = 7100;

/// Kernel modules the board loads (with their dependencies): PCI transport for virtio, the
/// network card, the 9p file system for `/payload`, and the entropy source.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "virtio_rng",
];

const INIT: &str = include_str!("guest/init.sh");
const AGENT: &str = include_str!("guest/agent.sh");
const MANIFEST_VERSION: &str = "edge-sim base 1";

/// The files a board boots from.
#[derive(Debug, Clone)]
pub struct Base {
    /// The kernel image (`-kernel`).
    pub kernel: PathBuf,
    /// The initramfs (`-initrd`).
    pub initramfs: PathBuf,
    /// The kernel package, e.g. `linux-image-6.1.0-56-arm64`.
    pub kernel_package: String,
    /// Whether anything had to be downloaded or built this time.
    pub built: bool,
}

/// Returns the cached base files, downloading and building what is missing.
/// `refresh` drops the cached kernel and busybox first (to pick up a newer Debian kernel).
pub fn prepare(cache: &Path, install: bool, refresh: bool) -> Result<Base> {
    if !refresh && let Some(base) = cached(cache)? {
        return Ok(base);
    }
    let _lock = CacheLock::acquire(cache, Duration::from_secs(900))?;
    let base_dir = cache.join("base");
    if refresh {
        let _ = std::fs::remove_file(base_dir.join("manifest"));
    } else if let Some(base) = cached(cache)? {
        return Ok(base);
    }
    if read_manifest(&base_dir).is_none() {
        extract_base(cache, install)?;
    }
    let mut base = build_initramfs(&base_dir)?;
    base.built = true;
    Ok(base)
}

/// The base files if the cache holds all of them for this version of edge-sim.
fn cached(cache: &Path) -> Result<Option<Base>> {
    let base_dir = cache.join("base");
    let Some(manifest) = read_manifest(&base_dir) else {
        return Ok(None);
    };
    let initramfs = base_dir.join(format!("initramfs-{:016x}.cpio", key(&manifest)));
    if !initramfs.is_file() {
        return Ok(None);
    }
    Ok(Some(Base {
        kernel: base_dir.join("Image"),
        initramfs,
        kernel_package: manifest.kernel_package,
        built: false,
    }))
}

struct Manifest {
    kernel_package: String,
    busybox_deb: String,
    load_order: Vec<String>,
}

fn read_manifest(base_dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(base_dir.join("manifest")).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MANIFEST_VERSION {
        return None;
    }
    let mut fields = BTreeMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once('=') {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    let wanted: Vec<String> = fields
        .get("wanted")?
        .split(',')
        .map(str::to_string)
        .collect();
    if wanted != MODULES {
        return None;
    }
    let load_order: Vec<String> = fields
        .get("load_order")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if !base_dir.join("Image").is_file() || !base_dir.join("busybox").is_file() {
        return None;
    }
    if load_order
        .iter()
        .any(|m| !base_dir.join("modules").join(format!("{m}.ko")).is_file())
    {
        return None;
    }
    Some(Manifest {
        kernel_package: fields.get("kernel_package")?.clone(),
        busybox_deb: fields.get("busybox_deb")?.clone(),
        load_order,
    })
}

/// The cache key of the initramfs: its scripts, modules and busybox.
fn key(manifest: &Manifest) -> u64 {
    fnv1a(&[
        INIT.as_bytes(),
        AGENT.as_bytes(),
        &AGENT_PORT.to_le_bytes(),
        manifest.kernel_package.as_bytes(),
        manifest.busybox_deb.as_bytes(),
        manifest.load_order.join(",").as_bytes(),
    ])
}

/// Downloads the kernel and busybox packages and extracts the kernel image, the modules and
/// busybox into `base/`.
fn extract_base(cache: &Path, install: bool) -> Result<()> {
    host::ensure_program("apt-get", "apt", false)?;
    host::ensure_program("dpkg-deb", "dpkg", false)?;
    host::ensure_program("tar", "tar", install)?;
    host::ensure_arm64_lists(install)?;
    let debs = cache.join("debs");
    let mut kernel_package = host::kernel_package()?;
    let kernel_deb = match host::download(&kernel_package, &debs) {
        Ok(deb) => deb,
        Err(first) => {
            // After apt-get update (done by the failed download) the kernel may have a new ABI
            // number, e.g. linux-image-6.1.0-57-arm64.
            let newer = host::kernel_package()?;
            if newer == kernel_package {
                return Err(first);
            }
            kernel_package = newer;
            host::download(&kernel_package, &debs)?
        }
    };
    let busybox_deb = host::download("busybox-static", &debs)?;

    let base_dir = cache.join("base");
    let _ = std::fs::remove_dir_all(&base_dir);
    let scratch = cache.join("extract");
    let _ = std::fs::remove_dir_all(&scratch);

    eprintln!("edge-sim: extracting the kernel and its modules");
    let kernel_tar = scratch.join("kernel.tar");
    host::deb_to_tar(&kernel_deb, &kernel_tar)?;
    let files = host::tar_files(&kernel_tar)?;
    let image = files
        .iter()
        .find(|f| f.starts_with("./boot/vmlinuz-"))
        .ok_or_else(|| Error::Setup(format!("no ./boot/vmlinuz-* in {}", kernel_deb.display())))?
        .clone();
    let by_name: BTreeMap<String, String> = files
        .iter()
        .filter(|f| f.starts_with("./lib/modules/"))
        .filter_map(|f| modules::module_name(f).map(|n| (n, f.clone())))
        .collect();
    if files
        .iter()
        .any(|f| f.ends_with(".ko.xz") || f.ends_with(".ko.zst"))
    {
        return Err(Error::Setup(format!(
            "{kernel_package} has compressed modules, which edge-sim does not unpack"
        )));
    }
    let builtin = builtin_modules(&kernel_tar, &files, &scratch)?;
    let wanted: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| !builtin.iter().any(|b| b == m))
        .collect();

    // Extract the wanted modules, then their dependencies, until nothing new is needed.
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    let mut members = vec![image.clone()];
    while !pending.is_empty() {
        let mut batch = Vec::new();
        for name in pending.drain(..) {
            let path = by_name
                .get(&name)
                .ok_or_else(|| Error::Setup(format!("{kernel_package} has no module {name}")))?;
            batch.push((name, path.clone()));
        }
        members.extend(batch.iter().map(|(_, p)| p.clone()));
        host::tar_extract(&kernel_tar, &members, &scratch)?;
        members.clear();
        for (name, path) in batch {
            let file = scratch.join(&path);
            let ko = std::fs::read(&file).map_err(|e| Error::io("reading", &file, e))?;
            let direct = modules::depends(&ko);
            for dep in &direct {
                if !deps.contains_key(dep) && !pending.contains(dep) {
                    pending.push(dep.clone());
                }
            }
            deps.insert(name, direct);
        }
        pending.retain(|p| !deps.contains_key(p));
    }
    let order = modules::load_order(&wanted, &deps).map_err(Error::Setup)?;

    std::fs::create_dir_all(base_dir.join("modules"))
        .map_err(|e| Error::io("creating", &base_dir, e))?;
    move_file(&scratch.join(&image), &base_dir.join("Image"))?;
    for name in &order {
        let from = scratch.join(&by_name[name]);
        move_file(&from, &base_dir.join("modules").join(format!("{name}.ko")))?;
    }
    let busybox_member = "./bin/busybox".to_string();
    host::extract(
        &busybox_deb,
        std::slice::from_ref(&busybox_member),
        &scratch,
    )?;
    move_file(&scratch.join("bin/busybox"), &base_dir.join("busybox"))?;
    let _ = std::fs::remove_dir_all(&scratch);

    let manifest = format!(
        "{MANIFEST_VERSION}\nkernel_package={kernel_package}\nbusybox_deb={}\nwanted={}\nload_order={}\n",
        busybox_deb
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?"),
        MODULES.join(","),
        order.join(","),
    );
    write_atomic(&base_dir.join("manifest"), manifest.as_bytes())
}

/// Module names the kernel has built in (from `modules.builtin`), so they need no loading.
fn builtin_modules(tar: &Path, files: &[String], scratch: &Path) -> Result<Vec<String>> {
    let Some(list) = files.iter().find(|f| f.ends_with("/modules.builtin")) else {
        return Ok(Vec::new());
    };
    host::tar_extract(tar, std::slice::from_ref(list), scratch)?;
    let path = scratch.join(list);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    Ok(text.lines().filter_map(modules::module_name).collect())
}

fn move_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io("moving to", to, e))
}

/// Writes `base/initramfs-KEY.cpio` from the extracted files and the guest scripts.
fn build_initramfs(base_dir: &Path) -> Result<Base> {
    let manifest = read_manifest(base_dir)
        .ok_or_else(|| Error::Setup("the cached base files are incomplete".into()))?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io("reading", p, e));
    let mut w = CpioWriter::new(Vec::with_capacity(8 << 20));
    let io = |e: std::io::Error| Error::Io {
        what: "writing the initramfs".into(),
        source: e,
    };
    for dir in [
        "bin",
        "sbin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        "payload",
    ] {
        w.dir(dir, 0o755).map_err(io)?;
    }
    w.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    w.file("bin/busybox", 0o755, &read(&base_dir.join("busybox"))?)
        .map_err(io)?;
    w.symlink("bin/sh", "busybox").map_err(io)?;
    let init = INIT.replace("@AGENT_PORT@", &AGENT_PORT.to_string());
    w.file("init", 0o755, init.as_bytes()).map_err(io)?;
    w.file("sbin/edge-agent", 0o755, AGENT.as_bytes())
        .map_err(io)?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(io)?;
    for name in &manifest.load_order {
        let ko = read(&base_dir.join("modules").join(format!("{name}.ko")))?;
        w.file(&format!("lib/modules/{name}.ko"), 0o644, &ko)
            .map_err(io)?;
    }
    let order = manifest.load_order.join("\n") + "\n";
    w.file("lib/modules/load-order", 0o644, order.as_bytes())
        .map_err(io)?;
    let bytes = w.finish().map_err(io)?;
    let path = base_dir.join(format!("initramfs-{:016x}.cpio", key(&manifest)));
    // Older initramfs files (from other versions of the scripts) are left for their users.
    write_atomic(&path, &bytes)?;
    Ok(Base {
        kernel: base_dir.join("Image"),
        initramfs: path,
        kernel_package: manifest.kernel_package,
        built: true,
    })
}
