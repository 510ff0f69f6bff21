//! Collections and string formatting.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Prints what the standard collections compute.
pub fn tour() {
    let mut v = vec![42, 7, 19, 3, 88, 7, 1];
    v.sort_unstable();
    v.dedup();
    println!("vec: sorted and deduplicated: {v:?}");
    let mut words = vec!["pear", "fig", "banana", "kiwi", "apple"];
    words.sort_by_key(|w| (w.len(), *w));
    println!("vec: by length: {words:?}");

    let text = "the quick brown fox jumps over the lazy dog the end";
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    println!("hashmap: word counts: {counts:?}");
    let letters: HashSet<char> = text.chars().filter(char::is_ascii_lowercase).collect();
    println!("hashset: distinct letters: {}", letters.len());

    let squares: BTreeMap<u32, u32> = (1..=10).map(|i| (i, i * i)).collect();
    let middle: Vec<_> = squares
        .range(4..=6)
        .map(|(k, v)| format!("{k}^2={v}"))
        .collect();
    println!("btreemap: {}", middle.join(" "));
    println!("btreemap: last: {:?}", squares.last_key_value());

    let mut deque: VecDeque<i32> = (1..=5).collect();
    deque.push_front(0);
    deque.push_back(6);
    deque.rotate_left(2);
    println!("vecdeque: {deque:?}");

    let name = "pop";
    println!(
        "format: [{name:>6}] [{name:<6}] [{name:^7}] [{:08.3}]",
        12.3456
    );
    println!("format: {:#x} {:#o} {:#b} {:e}", 255, 8, 5, 1234.5);
    println!("format: {:?} {:?}", "quote\"d\n", Some((1, 'x')));
    let upper: String = "Popcorn".chars().rev().collect::<String>().to_uppercase();
    println!("string: {upper} has {} bytes", upper.len());
}
