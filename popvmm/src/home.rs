//! `popvmm launch --cluster FILE --id N`: the launching process joins the cluster as node N
//! (serving the same control socket as `popvmm node`), runs the VM there, and stays the VM's
//! home wherever it migrates: output arrives here and the process exits with the
//! application's status.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::cli::LaunchArgs;
use crate::node::NodeArgs;
use crate::node::daemon;
use pop_migrate::registry::new_vm_id;
use vmm::image::Image;
use vmm::launch::EXIT_VMM_ERROR;
use vmm::timings::Timings;
use vmm::vm::Vm;

/// Runs the launch; returns the exit status (errors are printed as one line).
pub fn launch_at_home(args: &LaunchArgs, process_start: Instant) -> i32 {
    match run(args, process_start) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("popvmm: error: {}", e.replace('\n', " "));
            EXIT_VMM_ERROR
        }
    }
}

fn run(args: &LaunchArgs, process_start: Instant) -> Result<i32, String> {
    let (Some(cluster), Some(id)) = (&args.cluster, args.id) else {
        return Err("--cluster and --id go together".into());
    };
    if std::env::var_os("RUST_LOG").is_some() {
        daemon::init_logging();
    }
    let mut config = args.to_config();
    config.node_id = id;
    let hooks = pop_migrate::hooks::ClusterHooks::new();
    if args.spread {
        hooks.spread_threads();
    }
    config.hooks = hooks.clone();
    let timings = std::sync::Arc::new(Timings::new(process_start));
    let image = Image::from_file(&args.image).map_err(|e| e.to_string())?;
    let name = image.name.clone();
    let vm = Vm::new(image, &config, timings).map_err(|e| e.to_string())?;
    // A VM in a cluster may move: huge pages make its bulk copies (and its TLB reach under
    // nested paging) much cheaper. Plain launches keep 4 KiB pages: they start faster.
    vm.shared().mem.prefer_huge_pages();
    let started = daemon::start(&NodeArgs {
        cluster: cluster.clone(),
        id,
        secret_file: None,
        control: None,
        keep_memory_secs: pop_migrate::vm::pool::KEEP.as_secs(),
        cpus: None,
    })?;
    let host = started.host.clone();
    hooks.attach(host.node());
    // The nodes that run reach a starting node at once (it wakes or dials each): wait for
    // each to connect or to be found down (its dial or wake-up refused), so that the
    // application sees the nodes that run up from its first instruction, and a node that is
    // down costs no wait; at most three heartbeats, for one that neither answers nor
    // refuses.
    let settle = (host.node().cluster().heartbeat * 3).min(Duration::from_secs(2));
    host.node().wait_settled(settle);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || daemon::serve_control(started))
        .map_err(|e| e.to_string())?;
    let vm_id = new_vm_id(id);
    // Its threads may move to other nodes (`pop::migrate`, `popvmm migrate --thread`).
    hooks.span(pop_migrate::thread::SpanCtx {
        spans: std::sync::Arc::downgrade(host.spans()),
        vm_id,
        origin: id,
        home: id,
    });
    let files = vm
        .shared()
        .fs
        .home_files()
        .ok_or("a new VM has its files at home")?;
    // The process exits without dropping the VM (its threads may be anywhere): its /tmp
    // goes when this returns, whatever the end.
    let _tmp = ScratchRemovedOnReturn(files.clone());
    let ended = host.homes().add(vm_id, files);
    host.run_vm(vm_id, name, id, vm);
    // Wait for the end, wherever the VM runs; if the node running it is lost, say so.
    let ended = loop {
        match ended.recv_timeout(Duration::from_millis(200)) {
            Ok(ended) => break ended,
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the VM vanished without an exit status".into());
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let node = host.node();
        if let Some(at) = host.homes().location(vm_id)
            && at != id
            && node
                .peers()
                .get(at as usize)
                .is_some_and(|p| p.state == net_msg::PeerState::Down)
        {
            return Err(format!(
                "node {at}, where the VM ran, was lost; the application is gone"
            ));
        }
    };
    host.homes().remove(vm_id);
    if let Some(e) = ended.error {
        eprintln!("popvmm: error: {e}");
    }
    Ok(ended.status)
}

/// A VM's home files whose scratch `/tmp` is removed when this goes out of scope.
struct ScratchRemovedOnReturn(std::sync::Arc<vmm::fs::HomeFiles>);

impl Drop for ScratchRemovedOnReturn {
    fn drop(&mut self) {
        self.0.remove_scratch();
    }
}
