//! Kernel modules: names, their `depends=` lists, and a load order with dependencies first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The module name of a `.ko` path as the kernel spells it (`virtio-rng.ko` -> `virtio_rng`).
pub fn module_name(path: &str) -> Option<String> {
    let file = Path::new(path).file_name()?.to_str()?;
    let stem = file.strip_suffix(".ko")?;
    Some(stem.replace('-', "_"))
}

/// The modules a `.ko` file depends on, read from its `.modinfo` strings (`depends=a,b`).
pub fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// Orders `wanted` and everything they depend on so that each module follows its
/// dependencies. `deps` gives each known module's direct dependencies.
pub fn load_order(
    wanted: &[&str],
    deps: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(format!("module dependency cycle through {name}"));
        }
        let direct = deps
            .get(name)
            .ok_or_else(|| format!("kernel module {name} not found in the kernel package"))?;
        path.push(name.to_string());
        for dep in direct {
            visit(dep, deps, done, path, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(name, deps, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_underscores() {
        assert_eq!(
            module_name("./lib/modules/6.1/kernel/drivers/char/hw_random/virtio-rng.ko").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name("./boot/vmlinuz"), None);
    }

    #[test]
    fn depends_reads_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=9pnet,fscache,netfs\0retpoline=Y\0";
        assert_eq!(depends(ko), ["9pnet", "fscache", "netfs"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing").is_empty());
    }

    #[test]
    fn dependencies_come_first() {
        let mut deps = BTreeMap::new();
        deps.insert("9p".into(), vec!["9pnet".into(), "fscache".into()]);
        deps.insert("fscache".into(), vec!["netfs".into()]);
        deps.insert("netfs".into(), vec![]);
        deps.insert("9pnet".into(), vec![]);
        deps.insert("9pnet_virtio".into(), vec!["9pnet".into()]);
        let order = load_order(&["9pnet_virtio", "9p"], &deps).unwrap();
        assert_eq!(order, ["9pnet", "9pnet_virtio", "netfs", "fscache", "9p"]);
        assert!(load_order(&["missing"], &deps).is_err());
    }
}
