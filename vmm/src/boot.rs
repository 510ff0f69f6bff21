//! What the guest finds in memory at boot: the [`BootInfo`], the argument and environment
//! block, and each vCPU's [`PerCpu`]. Structures are encoded field by field at their
//! `offset_of!` positions, so no padding or host layout assumption leaks into guest memory.

use std::ffi::OsString;
use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;

use pop_abi::layout::{BOOT_ARGS_ADDR, BOOT_ARGS_SIZE, BOOT_INFO_ADDR, SHARED_BASE, percpu_data};
use pop_abi::{ABI_VERSION, BOOT_INFO_MAGIC, BootInfo, PerCpu};

use crate::image::{Image, MAIN_STACK_SIZE};
use crate::memory::GuestMem;

/// The process id every guest sees.
pub const GUEST_PID: u32 = 1;

/// The arguments and environment do not fit in the boot argument area.
#[derive(Debug, thiserror::Error)]
#[error(
    "the arguments and environment take {needed} bytes, more than the {BOOT_ARGS_SIZE} bytes the guest has for them"
)]
pub struct ArgsTooLarge {
    /// Bytes they would take.
    pub needed: u64,
}

/// Where [`write_args`] put `argv` and `envp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgsBlock {
    /// Number of arguments.
    pub argc: u64,
    /// Guest address of the argv pointer array.
    pub argv: u64,
    /// Guest address of the envp pointer array.
    pub envp: u64,
}

/// Writes `args` and `env` as C strings with NULL-terminated pointer arrays into the boot
/// argument area.
pub fn write_args(
    mem: &GuestMem,
    args: &[OsString],
    env: &[OsString],
) -> Result<ArgsBlock, ArgsTooLarge> {
    let pointers = (args.len() + 1 + env.len() + 1) as u64 * 8;
    let strings: u64 = args.iter().chain(env).map(|s| s.len() as u64 + 1).sum();
    let needed = pointers + strings;
    if needed > BOOT_ARGS_SIZE {
        return Err(ArgsTooLarge { needed });
    }
    let mut block = vec![0u8; needed as usize];
    let argv = BOOT_ARGS_ADDR;
    let envp = argv + (args.len() as u64 + 1) * 8;
    let mut string_at = pointers as usize;
    let mut pointer_at = 0usize;
    for (i, s) in args.iter().chain(env).enumerate() {
        if i == args.len() {
            pointer_at += 8; // argv's NULL
        }
        let addr = BOOT_ARGS_ADDR + string_at as u64;
        block[pointer_at..pointer_at + 8].copy_from_slice(&addr.to_le_bytes());
        pointer_at += 8;
        block[string_at..string_at + s.len()].copy_from_slice(s.as_bytes());
        string_at += s.len() + 1;
    }
    mem.write(BOOT_ARGS_ADDR, &block)
        .expect("boot argument area is in private memory");
    Ok(ArgsBlock {
        argc: args.len() as u64,
        argv,
        envp,
    })
}

/// Everything the guest needs at boot except the clock reference, which is taken just before
/// the first vCPU runs ([`write_clock_reference`]).
pub fn boot_info(
    image: &Image,
    mem: &GuestMem,
    args: ArgsBlock,
    parallelism: u32,
    max_vcpus: u32,
    node_id: u32,
) -> BootInfo {
    let tls = image.tls.unwrap_or_default();
    BootInfo {
        magic: BOOT_INFO_MAGIC,
        abi_version: ABI_VERSION,
        node_id,
        argc: args.argc,
        argv: args.argv,
        envp: args.envp,
        shared_start: SHARED_BASE,
        shared_end: mem.shared_end(),
        heap_start: image.heap_start(),
        heap_end: mem.shared_end() - MAIN_STACK_SIZE,
        tls_image: tls.vaddr,
        tls_filesz: tls.filesz,
        tls_memsz: tls.memsz,
        tls_align: tls.align.max(1),
        counter_khz: 0,
        boot_counter: 0,
        boot_realtime_ns: 0,
        boot_monotonic_ns: 0,
        parallelism: parallelism.max(1),
        max_vcpus,
        pid: GUEST_PID,
        reserved: 0,
    }
}

/// Little-endian field encoder for `#[repr(C)]` structures.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new(size: usize) -> Encoder {
        Encoder(vec![0; size])
    }
    fn u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        self
    }
    fn u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        self
    }
}

/// Encodes a [`BootInfo`] as the guest sees it.
pub fn encode_boot_info(info: &BootInfo) -> Vec<u8> {
    let mut e = Encoder::new(size_of::<BootInfo>());
    e.u64(offset_of!(BootInfo, magic), info.magic)
        .u32(offset_of!(BootInfo, abi_version), info.abi_version)
        .u32(offset_of!(BootInfo, node_id), info.node_id)
        .u64(offset_of!(BootInfo, argc), info.argc)
        .u64(offset_of!(BootInfo, argv), info.argv)
        .u64(offset_of!(BootInfo, envp), info.envp)
        .u64(offset_of!(BootInfo, shared_start), info.shared_start)
        .u64(offset_of!(BootInfo, shared_end), info.shared_end)
        .u64(offset_of!(BootInfo, heap_start), info.heap_start)
        .u64(offset_of!(BootInfo, heap_end), info.heap_end)
        .u64(offset_of!(BootInfo, tls_image), info.tls_image)
        .u64(offset_of!(BootInfo, tls_filesz), info.tls_filesz)
        .u64(offset_of!(BootInfo, tls_memsz), info.tls_memsz)
        .u64(offset_of!(BootInfo, tls_align), info.tls_align)
        .u64(offset_of!(BootInfo, counter_khz), info.counter_khz)
        .u64(offset_of!(BootInfo, boot_counter), info.boot_counter)
        .u64(
            offset_of!(BootInfo, boot_realtime_ns),
            info.boot_realtime_ns,
        )
        .u64(
            offset_of!(BootInfo, boot_monotonic_ns),
            info.boot_monotonic_ns,
        )
        .u32(offset_of!(BootInfo, parallelism), info.parallelism)
        .u32(offset_of!(BootInfo, max_vcpus), info.max_vcpus)
        .u32(offset_of!(BootInfo, pid), info.pid)
        .u32(offset_of!(BootInfo, reserved), info.reserved);
    e.0
}

/// Writes `info` at [`BOOT_INFO_ADDR`].
pub fn write_boot_info(mem: &GuestMem, info: &BootInfo) {
    mem.write(BOOT_INFO_ADDR, &encode_boot_info(info))
        .expect("BootInfo is in private memory");
}

/// Fills in the clock reference of the [`BootInfo`]: the guest counter and the host clocks
/// at (nearly) the same instant.
pub fn write_clock_reference(mem: &GuestMem, counter: u64, realtime_ns: u64, monotonic_ns: u64) {
    let base = BOOT_INFO_ADDR;
    for (offset, value) in [
        (offset_of!(BootInfo, boot_counter), counter),
        (offset_of!(BootInfo, boot_realtime_ns), realtime_ns),
        (offset_of!(BootInfo, boot_monotonic_ns), monotonic_ns),
    ] {
        mem.write_u64(base + offset as u64, value)
            .expect("BootInfo is in private memory");
    }
}

/// Records in the [`BootInfo`] that the VM now runs on node `node` (at boot, and where a
/// migrated VM resumes): what `pop::current_nid()` answers.
pub fn write_node_id(mem: &GuestMem, node: u32) {
    let addr = BOOT_INFO_ADDR + offset_of!(BootInfo, node_id) as u64;
    mem.write(addr, &node.to_le_bytes())
        .expect("BootInfo is in private memory");
}

/// The node the VM runs on, as its [`BootInfo`] says.
pub fn node_id(mem: &GuestMem) -> u32 {
    let addr = BOOT_INFO_ADDR + offset_of!(BootInfo, node_id) as u64;
    let mut raw = [0u8; 4];
    let _ = mem.read_into(addr, &mut raw);
    u32::from_le_bytes(raw)
}

/// Writes the [`PerCpu`] of vCPU `vcpu`, now running thread `tid`.
pub fn write_percpu(mem: &GuestMem, vcpu: u32, tid: u32) {
    let addr = percpu_data(vcpu);
    let mut e = Encoder::new(size_of::<PerCpu>());
    e.u64(offset_of!(PerCpu, self_addr), addr)
        .u32(offset_of!(PerCpu, vcpu_id), vcpu)
        .u32(offset_of!(PerCpu, tid), tid);
    mem.write(addr, &e.0)
        .expect("per-vCPU areas are in private memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_laid_out_as_c_arrays() {
        let mem = GuestMem::new(4 << 20, 2 << 20).unwrap();
        let args: Vec<OsString> = vec!["prog".into(), "a b".into()];
        let env: Vec<OsString> = vec!["K=V".into()];
        let block = write_args(&mem, &args, &env).unwrap();
        assert_eq!(block.argc, 2);
        let read_str = |ptr: u64| mem.read_c_string(ptr, 100).unwrap();
        let argv0 = mem.read_u64(block.argv).unwrap();
        assert_eq!(read_str(argv0), b"prog");
        assert_eq!(read_str(mem.read_u64(block.argv + 8).unwrap()), b"a b");
        assert_eq!(mem.read_u64(block.argv + 16), Ok(0));
        assert_eq!(read_str(mem.read_u64(block.envp).unwrap()), b"K=V");
        assert_eq!(mem.read_u64(block.envp + 8), Ok(0));

        let huge = vec![OsString::from("x".repeat(BOOT_ARGS_SIZE as usize))];
        assert!(write_args(&mem, &args, &huge).is_err());
    }

    #[test]
    fn boot_info_encoding_round_trips() {
        let info = BootInfo {
            magic: BOOT_INFO_MAGIC,
            argc: 3,
            pid: 9,
            reserved: 0,
            max_vcpus: 7,
            tls_align: 16,
            ..Default::default()
        };
        let bytes = encode_boot_info(&info);
        assert_eq!(bytes.len(), size_of::<BootInfo>());
        assert_eq!(&bytes[..8], &BOOT_INFO_MAGIC.to_le_bytes());
        let at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        assert_eq!(at(offset_of!(BootInfo, argc)), 3);
        assert_eq!(at(offset_of!(BootInfo, tls_align)), 16);
        let pid_at = offset_of!(BootInfo, pid);
        assert_eq!(
            u32::from_le_bytes(bytes[pid_at..pid_at + 4].try_into().unwrap()),
            9
        );
    }
}
