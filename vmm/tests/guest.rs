//! Hand-assembled guests exercising the hypercall path, threads and crash reports, without a
//! libos.

use std::time::Instant;

use pop_abi::errno::{EAGAIN, EFAULT, EINVAL, ENOENT, ENOSYS, ESRCH, ETIMEDOUT};
use pop_abi::layout::{BOOT_INFO_ADDR, IMAGE_BASE, SHARED_BASE};
use pop_abi::{BOOT_INFO_MAGIC, Hypercall, hypercall::NO_TIMEOUT};
use vmm::Outcome;
use vmm::testing::asm::{Asm, Reg};
use vmm::testing::run_code;
use vmm::testing::{captured, text, u64_at};

const DATA: usize = 0x800;
const SCRATCH: u32 = SHARED_BASE as u32 + 0x10_0000;

#[test]
fn write_and_exit() {
    let mut a = Asm::new();
    a.write(1, IMAGE_BASE + DATA as u64, 6)
        .write(2, IMAGE_BASE + DATA as u64, 3)
        .exit(7);
    a.pad_to(DATA).bytes(b"hello\n");
    let (config, out, err) = captured();
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Exit(7));
    assert_eq!(text(&out), "hello\n");
    assert_eq!(text(&err), "hel");
}

#[test]
fn abort_ends_with_134() {
    let mut a = Asm::new();
    a.hypercall(Hypercall::Abort as u16, &[]);
    let (config, _, _) = captured();
    let outcome = run_code(&a.code, &config).unwrap();
    assert_eq!((outcome.clone(), outcome.status()), (Outcome::Abort, 134));
}

/// Runs `a` (which must leave results at SCRATCH.. and not exit), then writes `n` results to
/// stdout and exits; returns the results. `data` goes at DATA.
fn results(mut a: Asm, n: usize, data: &[u8]) -> Vec<i64> {
    a.write(1, SCRATCH.into(), n as u64 * 8).exit(0);
    a.pad_to(DATA).bytes(data);
    let (config, out, err) = captured();
    assert_eq!(
        run_code(&a.code, &config).unwrap(),
        Outcome::Exit(0),
        "{}",
        text(&err)
    );
    (0..n).map(|i| u64_at(&out, i) as i64).collect()
}

#[test]
fn bad_pointers_and_unknown_calls_are_refused() {
    let mut a = Asm::new();
    let calls: [(u16, &[u64]); 6] = [
        (Hypercall::Write as u16, &[1, 0x3000_0000, 4]),
        (Hypercall::Write as u16, &[1, u64::MAX - 1, 4]),
        (Hypercall::Write as u16, &[77, IMAGE_BASE, 1]),
        (0, &[]),
        (Hypercall::Open as u16, &[IMAGE_BASE + DATA as u64, 0, 0]),
        (Hypercall::Join as u16, &[42]),
    ];
    for (i, (nr, args)) in calls.iter().enumerate() {
        a.hypercall(*nr, args).store_rax(SCRATCH + 8 * i as u32);
    }
    let r = results(a, calls.len(), b"/etc/passwd\0");
    let e = |errno: i32| -i64::from(errno);
    assert_eq!(
        r,
        vec![
            e(EFAULT),
            e(EFAULT),
            e(pop_abi::errno::EBADF),
            e(ENOSYS),
            e(ENOENT),
            e(ESRCH)
        ]
    );
}

#[test]
fn futex_wait_checks_value_alignment_and_timeout() {
    let word = u64::from(SCRATCH) + 0x800;
    let mut a = Asm::new();
    let calls: [&[u64]; 4] = [
        &[word, 1, NO_TIMEOUT],        // word is 0: value changed
        &[word, 0, 2_000_000],         // 2 ms timeout
        &[word + 2, 0, NO_TIMEOUT],    // unaligned
        &[0x3000_0000, 0, NO_TIMEOUT], // outside memory
    ];
    for (i, args) in calls.iter().enumerate() {
        a.hypercall(Hypercall::FutexWait as u16, args)
            .store_rax(SCRATCH + 8 * i as u32);
    }
    a.hypercall(Hypercall::FutexWake as u16, &[word, 1])
        .store_rax(SCRATCH + 32);
    let started = Instant::now();
    let r = results(a, 5, &[]);
    assert!(started.elapsed().as_millis() >= 2);
    let e = |errno: i32| -i64::from(errno);
    assert_eq!(r, vec![e(EAGAIN), e(ETIMEDOUT), e(EINVAL), e(EFAULT), 0]);
}

#[test]
fn boot_info_and_registers_at_entry() {
    let mut a = Asm::new();
    a.mov(Reg::Rax, Reg::Rdi).store_rax(SCRATCH);
    a.mov(Reg::Rax, Reg::Rsp).store_rax(SCRATCH + 8);
    a.load_rax_gs(0).store_rax(SCRATCH + 16);
    a.load_rax_gs(8).store_rax(SCRATCH + 24);
    a.write(1, SCRATCH.into(), 32)
        .write(1, BOOT_INFO_ADDR, 0x2000)
        .exit(0);
    let (mut config, out, _) = captured();
    config.args = vec!["prog".into(), "arg1".into()];
    config.env = vec!["K=V".into()];
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Exit(0));
    let shared_end = SHARED_BASE + (16 << 20);
    assert_eq!(u64_at(&out, 0), BOOT_INFO_ADDR, "rdi");
    assert_eq!(u64_at(&out, 1), shared_end, "rsp");
    let percpu = pop_abi::layout::percpu_data(0);
    assert_eq!(u64_at(&out, 2), percpu, "gs:[0] is PerCpu.self_addr");
    assert_eq!(u64_at(&out, 3), 1 << 32, "vcpu 0, tid 1");
    let info = |field: usize| u64_at(&out, 4 + field / 8);
    use pop_abi::BootInfo;
    use std::mem::offset_of;
    assert_eq!(info(offset_of!(BootInfo, magic)), BOOT_INFO_MAGIC);
    assert_eq!(info(offset_of!(BootInfo, argc)), 2);
    assert_eq!(info(offset_of!(BootInfo, shared_start)), SHARED_BASE);
    assert_eq!(info(offset_of!(BootInfo, shared_end)), shared_end);
    assert_eq!(info(offset_of!(BootInfo, heap_start)), SHARED_BASE);
    assert_eq!(info(offset_of!(BootInfo, heap_end)), shared_end - (8 << 20));
    assert!(
        info(offset_of!(BootInfo, counter_khz)) > 100_000,
        "TSC frequency"
    );
    assert!(info(offset_of!(BootInfo, boot_counter)) > 0);
    assert!(info(offset_of!(BootInfo, boot_realtime_ns)) > 1_600_000_000 * 1_000_000_000);
    assert!(info(offset_of!(BootInfo, boot_monotonic_ns)) > 0);
    let argv = info(offset_of!(BootInfo, argv));
    let bytes = out.lock().unwrap();
    let mem_at = |addr: u64| 32 + (addr - BOOT_INFO_ADDR) as usize;
    let argv0 = u64::from_le_bytes(bytes[mem_at(argv)..mem_at(argv) + 8].try_into().unwrap());
    assert_eq!(&bytes[mem_at(argv0)..mem_at(argv0) + 5], b"prog\0");
}

#[test]
fn threads_spawn_join_and_reuse_vcpus() {
    // Thread body at THREAD: stores its arg, fs:[0] and gs:[8] (vcpu, tid) at the address
    // given as `func`, then exits.
    const THREAD: usize = 0x400;
    let tls = u64::from(SCRATCH) + 0x900;
    let mut a = Asm::new();
    // Main: mark the TLS word, spawn twice (joining in between), then report.
    a.mov_imm(Reg::Rax, 0xfeed).store_rax(tls as u32);
    for round in 0..2u64 {
        let slot = u64::from(SCRATCH) + 0x100 * (round + 1);
        a.hypercall(
            Hypercall::Spawn as u16,
            &[
                IMAGE_BASE + THREAD as u64,
                slot,
                100 + round,
                u64::from(SCRATCH) + 0x8000 * (round + 1),
                tls,
            ],
        );
        a.store_rax(SCRATCH + 8 * round as u32);
        a.mov(Reg::Rdi, Reg::Rax)
            .trap(Hypercall::Join as u16)
            .store_rax(SCRATCH + 16 + 8 * round as u32);
    }
    a.write(1, SCRATCH.into(), 32)
        .write(1, u64::from(SCRATCH) + 0x100, 24)
        .write(1, u64::from(SCRATCH) + 0x200, 24);
    a.exit(0);
    a.pad_to(THREAD);
    // Thread: rdi = slot, rsi = arg.
    a.mov(Reg::Rbx, Reg::Rdi);
    a.mov(Reg::Rax, Reg::Rsi).bytes(&[0x48, 0x89, 0x03]); // mov [rbx], rax
    a.load_rax_fs0().bytes(&[0x48, 0x89, 0x43, 0x08]); // mov [rbx+8], rax
    a.load_rax_gs(8).bytes(&[0x48, 0x89, 0x43, 0x10]); // mov [rbx+16], rax
    a.hypercall(Hypercall::ThreadExit as u16, &[0]); // no completion word
    let (config, out, err) = captured();
    assert_eq!(
        run_code(&a.code, &config).unwrap(),
        Outcome::Exit(0),
        "{}",
        text(&err)
    );
    let r: Vec<u64> = (0..10).map(|i| u64_at(&out, i)).collect();
    assert_eq!(&r[0..4], &[2, 3, 0, 0], "tids and joins");
    assert_eq!(
        &r[4..7],
        &[100, 0xfeed, 1 | (2 << 32)],
        "first thread: arg, fs:[0], vcpu 1 tid 2"
    );
    assert_eq!(
        &r[7..10],
        &[101, 0xfeed, 1 | (3 << 32)],
        "second thread reuses vcpu 1"
    );
}

#[test]
fn max_threads_limits_spawn() {
    // The spawned thread spins forever; the second spawn must fail with EAGAIN (max 2).
    const THREAD: usize = 0x400;
    let mut a = Asm::new();
    let spawn = [
        IMAGE_BASE + THREAD as u64,
        0,
        0,
        u64::from(SCRATCH) + 0x8000,
        0,
    ];
    a.hypercall(Hypercall::Spawn as u16, &spawn)
        .store_rax(SCRATCH);
    a.hypercall(Hypercall::Spawn as u16, &spawn)
        .store_rax(SCRATCH + 8);
    a.write(1, SCRATCH.into(), 16).exit(3);
    a.pad_to(THREAD).bytes(&[0xeb, 0xfe]); // jmp $
    let (mut config, out, _) = captured();
    config.max_threads = 2;
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Exit(3));
    assert_eq!(u64_at(&out, 0), 2);
    assert_eq!(u64_at(&out, 1) as i64, -i64::from(EAGAIN));
}

#[test]
fn null_dereference_without_handler_is_a_triple_fault() {
    let mut a = Asm::new();
    a.mov_imm(Reg::Rbx, 0x1234).load_rax(0);
    let (config, _, err) = captured();
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Fault);
    let report = text(&err);
    assert!(
        report.starts_with("popvmm: guest fault: triple fault"),
        "{report}"
    );
    assert!(report.contains("rbx 0x0000000000001234"), "{report}");
    assert!(report.contains("backtrace:\n  #0 0x40000a"), "{report}");
}

#[test]
fn fault_hypercall_reports_the_frame() {
    use pop_abi::X86FaultFrame;
    use std::mem::{offset_of, size_of};
    let mut frame = vec![0u8; size_of::<X86FaultFrame>()];
    let mut put = |off: usize, v: u64| frame[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(offset_of!(X86FaultFrame, vector), 14);
    put(offset_of!(X86FaultFrame, error_code), 2);
    put(offset_of!(X86FaultFrame, rip), 0x40_1234);
    put(offset_of!(X86FaultFrame, rax), 0xaaaa);
    let mut a = Asm::new();
    a.hypercall(Hypercall::Fault as u16, &[IMAGE_BASE + DATA as u64]);
    a.pad_to(DATA).bytes(&frame);
    let (config, _, err) = captured();
    let outcome = run_code(&a.code, &config).unwrap();
    assert_eq!((outcome.clone(), outcome.status()), (Outcome::Fault, 139));
    let report = text(&err);
    let first = report.lines().next().unwrap();
    assert_eq!(
        first,
        "popvmm: guest fault: page fault (#PF) at 0x401234, address 0x0 (write, not present)"
    );
    assert!(report.contains("rax 0x000000000000aaaa"), "{report}");
    assert!(report.contains("error code 0x2"), "{report}");
    assert!(report.ends_with("backtrace:\n  #0 0x401234\n"), "{report}");
}

#[test]
fn stray_port_io_is_a_fault() {
    // Ring 3 may not do port I/O: `out` raises #GP, which (with no handler installed) ends
    // in a triple fault.
    let mut a = Asm::new();
    a.bytes(&[0xba, 0x80, 0, 0, 0, 0xef]); // mov edx, 0x80; out dx, eax
    let (config, _, err) = captured();
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Fault);
    let report = text(&err);
    assert!(report.starts_with("popvmm: guest fault: "), "{report}");
}

#[test]
fn stray_mmio_is_a_fault() {
    // A store to unbacked memory outside the hypercall page is reported, not served.
    let mut a = Asm::new();
    a.mov_imm(Reg::R11, pop_abi::layout::HYPERCALL_MMIO_ADDR + 0x1000)
        .bytes(&[0x49, 0x89, 0x03]);
    let (config, _, err) = captured();
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Fault);
    let report = text(&err);
    assert!(
        report.starts_with("popvmm: guest fault: write to unbacked guest physical memory"),
        "{report}"
    );
}

#[test]
fn hypercall_round_trip() {
    const N: u64 = 20_000;
    let mut a = Asm::new();
    a.mov_imm(Reg::Rbx, N);
    let top = a.code.len();
    a.trap(0); // unknown hypercall: answered with -ENOSYS, the cheapest round trip
    a.bytes(&[0x48, 0xff, 0xcb]); // dec rbx
    let rel = top as i64 - (a.code.len() as i64 + 2);
    a.bytes(&[0x75, rel as i8 as u8]); // jnz top
    a.exit(0);
    let (config, _, _) = captured();
    let started = Instant::now();
    assert_eq!(run_code(&a.code, &config).unwrap(), Outcome::Exit(0));
    let per_call = started.elapsed() / N as u32;
    eprintln!("hypercall round trip: {per_call:?} (including VM setup amortized over {N} calls)");
}

/// SSE at the entry point. On a host whose KVM is PVM (`kvm_pvm`), ring-0 guest code is run
/// by KVM's instruction emulator, which cannot execute `movd`; the application runs in ring 3,
/// which runs natively there.
#[test]
fn sse_works_at_entry() {
    let mut a = Asm::new();
    a.mov_imm(Reg::Rcx, 0x41);
    a.bytes(&[0x66, 0x0f, 0x6e, 0xc1]); // movd xmm0, ecx
    a.bytes(&[0x66, 0x0f, 0x7e, 0xc0]); // movd eax, xmm0
    a.store_rax(SCRATCH);
    a.write(1, SCRATCH.into(), 8).exit(0);
    let (config, out, err) = captured();
    assert_eq!(
        run_code(&a.code, &config).unwrap(),
        Outcome::Exit(0),
        "{}",
        text(&err)
    );
    assert_eq!(u64_at(&out, 0), 0x41);
}

/// Times 20M guest instructions: tens of milliseconds natively, tens of seconds when KVM
/// emulates ring-0 guest code (PVM hosts). Run with `--ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn compute_loop_speed() {
    let mut a = Asm::new();
    a.mov_imm(Reg::Rbx, 10_000_000);
    let top = a.code.len();
    a.bytes(&[0x48, 0xff, 0xcb]); // dec rbx
    let rel = top as i64 - (a.code.len() as i64 + 2);
    a.bytes(&[0x75, rel as i8 as u8]); // jnz top
    a.bytes(&[0x0f, 0x0b]); // ud2 -> triple fault ends the VM
    let (config, _, _) = captured();
    let started = Instant::now();
    let _ = run_code(&a.code, &config).unwrap();
    eprintln!("10M-iteration loop: {:?}", started.elapsed());
}

/// Pausing one thread stops just that thread; the others run on; it resumes where it was.
/// Pausing the whole VM then stops every thread.
#[test]
fn one_thread_pauses_while_the_others_run() {
    use std::sync::Arc;
    use std::time::Duration;
    use vmm::image::Image;
    use vmm::timings::Timings;
    use vmm::vm::{PauseError, Vm};

    const THREAD: usize = 0x400;
    let (main_counter, thread_counter) = (u64::from(SCRATCH), u64::from(SCRATCH) + 8);
    // inc qword [disp32]; jmp back to it
    let spin = |a: &mut Asm, addr: u64| {
        a.bytes(&[0x48, 0xff, 0x04, 0x25])
            .bytes(&(addr as u32).to_le_bytes())
            .bytes(&[0xeb, 0xf6]);
    };
    let mut a = Asm::new();
    a.hypercall(
        Hypercall::Spawn as u16,
        &[
            IMAGE_BASE + THREAD as u64,
            0,
            0,
            u64::from(SCRATCH) + 0x8000,
            0,
        ],
    );
    spin(&mut a, main_counter);
    a.pad_to(THREAD);
    spin(&mut a, thread_counter);
    let (config, _out, err) = captured();
    let vm = Vm::new(
        Image::raw_code(&a.code),
        &config,
        Arc::new(Timings::new(Instant::now())),
    )
    .unwrap();
    let shared = vm.shared();
    let runner = std::thread::spawn(move || vm.run());
    let read = |addr| shared.mem.read_u64(addr).unwrap();
    let moving = |addr| {
        let before = read(addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            if read(addr) != before {
                return true;
            }
        }
        false
    };
    assert!(
        moving(main_counter) && moving(thread_counter),
        "{}",
        text(&err)
    );

    let parked = shared.pause_thread(2, Duration::from_secs(10)).unwrap();
    assert_eq!((parked.tid, parked.index), (2, 1));
    assert!(parked.pending.is_none(), "it was computing, not blocked");
    let stopped_at = read(thread_counter);
    assert!(moving(main_counter), "the main thread runs on");
    assert_eq!(
        read(thread_counter),
        stopped_at,
        "the paused thread stays stopped"
    );
    assert_eq!(
        shared.pause(Duration::from_millis(200)).unwrap_err(),
        PauseError::Busy
    );
    shared.resume();
    assert!(moving(thread_counter), "the thread resumed");
    assert_eq!(
        shared.pause_thread(9, Duration::from_secs(1)).unwrap_err(),
        PauseError::NoThread(9)
    );

    let paused = shared.pause(Duration::from_secs(10)).unwrap();
    assert_eq!(paused.vcpus.len(), 2);
    let (m, t) = (read(main_counter), read(thread_counter));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!((read(main_counter), read(thread_counter)), (m, t));
    shared.resume();
    assert!(moving(main_counter));
    shared.finish(Outcome::Exit(0));
    assert_eq!(runner.join().unwrap().unwrap(), Outcome::Exit(0));
}
