//! The Popcorn tutorial's `primesum`: four threads count the numbers below `MAX` for which
//! the tutorial's `is_prime` holds, each over a contiguous quarter of `0..MAX`.
//!
//! It demonstrates CPU-bound threads (one vCPU each under popvmm). Like the tutorial's
//! version, `is_prime` counts 0 and 1 as prime: with the default `MAX` of 400000 the sums
//! are 9594, 8392, 8013 and 7863, 33862 in all.
//!
//! Usage: `primesum [MAX [THREADS [spread|snake]]]` (THREADS defaults to 4; benchmarks
//! compare 1 and 4). With `spread`, thread `i` first moves itself to the `i`-th node of the
//! cluster (round-robin over the nodes of its ISA that are up, its own first), as the
//! tutorial's version places its threads with `migrate`. With `snake`, the round-robin goes
//! back and forth (nodes 0 1 1 0 on two nodes): the later quarters cost more (larger
//! numbers have more candidate divisors), and this gives each node a fair share.

use std::thread;

/// Number of worker threads when no argument says otherwise.
const DEFAULT_THREADS: u64 = 4;
/// `MAX` when no argument is given.
const DEFAULT_MAX: u64 = 400_000;

/// The tutorial's primality test: no divisor in `2..n` (checked up to the square root,
/// which gives the same answers), so 0 and 1 count as prime.
fn is_prime(n: u64) -> bool {
    let mut i = 2;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

/// How many numbers in `start..end` pass [`is_prime`].
fn count_primes(start: u64, end: u64) -> u64 {
    (start..end).filter(|&n| is_prime(n)).count() as u64
}

/// The numeric argument at `index`, or `default` when absent; exits on a bad one.
fn arg(index: usize, name: &str, default: u64) -> u64 {
    match std::env::args().nth(index) {
        Some(arg) => match arg.parse::<u64>() {
            Ok(value) if value > 0 || name == "MAX" => value,
            Ok(_) => {
                eprintln!("primesum: {name} must be positive");
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("primesum: bad {name} {arg:?}: {e}");
                std::process::exit(2);
            }
        },
        None => default,
    }
}

fn main() {
    let max = arg(1, "MAX", DEFAULT_MAX);
    let threads = arg(2, "THREADS", DEFAULT_THREADS);
    let (spread, snake) = match std::env::args().nth(3).as_deref() {
        None => (false, false),
        Some("spread") => (true, false),
        Some("snake") => (true, true),
        Some(other) => {
            eprintln!("primesum: unknown option {other:?} (spread or snake)");
            std::process::exit(2);
        }
    };
    let nodes: Vec<u32> = if spread {
        pop::movable_nodes().collect()
    } else {
        Vec::new()
    };
    let node_of = |i: usize| {
        let (lap, at) = (i / nodes.len(), i % nodes.len());
        nodes[if snake && lap % 2 == 1 {
            nodes.len() - 1 - at
        } else {
            at
        }]
    };
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (start, end) = (i * max / threads, (i + 1) * max / threads);
            let to = (!nodes.is_empty()).then(|| node_of(i as usize));
            thread::spawn(move || {
                if let Some(to) = to
                    && let Err(e) = pop::migrate(to)
                {
                    eprintln!("primesum: thread {i} cannot move to node {to}: {e}");
                    std::process::exit(1);
                }
                count_primes(start, end)
            })
        })
        .collect();
    let mut total = 0;
    for (i, worker) in workers.into_iter().enumerate() {
        let sum = worker.join().expect("worker thread panicked");
        println!("thread {i} sum is {sum}");
        total += sum;
    }
    println!("sum is {total}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_tutorial_definition() {
        let naive = |n: u64| (2..n).all(|i| !n.is_multiple_of(i));
        for n in 0..2000 {
            assert_eq!(is_prime(n), naive(n), "n = {n}");
        }
        assert!(is_prime(0) && is_prime(1));
    }
}
