//! edge-sim test probe: `probe MODE [ARGS]`, run inside the simulated aarch64 board.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        // Output on both streams, then the given exit status.
        "exit" => {
            println!("probe stdout on {}", std::env::consts::ARCH);
            eprintln!("probe stderr");
            ExitCode::from(arg(2).parse::<u8>().unwrap_or(0))
        }
        // Every byte value on stdout, and the same reversed on stderr.
        "bytes" => {
            let all: Vec<u8> = (0..=255u8).collect();
            std::io::stdout().write_all(&all).unwrap();
            let rev: Vec<u8> = all.iter().rev().copied().collect();
            std::io::stderr().write_all(&rev).unwrap();
            ExitCode::SUCCESS
        }
        // stdin to stdout.
        "cat" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).unwrap();
            std::io::stdout().write_all(&buf).unwrap();
            ExitCode::SUCCESS
        }
        // A panic caught with catch_unwind (unwinding works with the musl build).
        "unwind" => {
            std::panic::set_hook(Box::new(|_| {}));
            let caught = std::panic::catch_unwind(|| panic!("boom")).is_err();
            println!("caught: {caught}");
            ExitCode::SUCCESS
        }
        "kvm" => kvm(),
        // Accept one connection on PORT: greet, read a line, print it.
        "listen" => {
            let listener = TcpListener::bind(("0.0.0.0", arg(2).parse::<u16>().unwrap())).unwrap();
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"hello from the board\n").unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            print!("board got: {line}");
            ExitCode::SUCCESS
        }
        // Connect to ADDR: send a line, print the reply line.
        "connect" => {
            let stream = TcpStream::connect(arg(2)).unwrap();
            (&stream).write_all(b"hello from the board\n").unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            print!("board got: {line}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("probe: unknown mode {other:?}");
            ExitCode::from(2)
        }
    }
}

/// Opens /dev/kvm, creates a VM and a vCPU initialised with the preferred target.
fn kvm() -> ExitCode {
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("probe: /dev/kvm: {e}");
            return ExitCode::from(3);
        }
    };
    let api = kvm.get_api_version();
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mut init = kvm_bindings::kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .expect("KVM_ARM_PREFERRED_TARGET");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    vcpu.vcpu_init(&init).expect("KVM_ARM_VCPU_INIT");
    println!(
        "kvm ok: api {api}, max vcpus {}, preferred target {}",
        kvm.get_max_vcpus(),
        init.target
    );
    ExitCode::SUCCESS
}
