//! Arguments, environment and exit status.

/// Prints `arg[i]=...` for each argument, then `env K=V` for each variable, sorted.
pub fn print_args_and_env() {
    for (i, arg) in std::env::args().enumerate() {
        println!("arg[{i}]={arg}");
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        println!("env {key}={value}");
    }
}

/// Exits with `code`, without unwinding or returning from main.
pub fn exit(code: i32) -> ! {
    std::process::exit(code)
}
