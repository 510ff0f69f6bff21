/work/main/libos/abi/target/debug/deps/pop_abi-9b04f42ce273667c.d: src/lib.rs src/errno.rs src/hypercall.rs src/layout.rs

/work/main/libos/abi/target/debug/deps/pop_abi-9b04f42ce273667c: src/lib.rs src/errno.rs src/hypercall.rs src/layout.rs

src/lib.rs:
src/errno.rs:
src/hypercall.rs:
src/layout.rs:
