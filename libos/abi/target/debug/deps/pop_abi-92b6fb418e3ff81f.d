/work/main/libos/abi/target/debug/deps/pop_abi-92b6fb418e3ff81f.d: src/lib.rs src/errno.rs src/hypercall.rs src/layout.rs

/work/main/libos/abi/target/debug/deps/libpop_abi-92b6fb418e3ff81f.rlib: src/lib.rs src/errno.rs src/hypercall.rs src/layout.rs

/work/main/libos/abi/target/debug/deps/libpop_abi-92b6fb418e3ff81f.rmeta: src/lib.rs src/errno.rs src/hypercall.rs src/layout.rs

src/lib.rs:
src/errno.rs:
src/hypercall.rs:
src/layout.rs:
