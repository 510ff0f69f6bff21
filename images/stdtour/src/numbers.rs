//! Floating-point math and formatting.

/// Prints results of the float functions std gets from the math library.
pub fn tour() {
    let x = 2.0f64;
    println!("float: sqrt(2) = {:.6}", x.sqrt());
    println!("float: sin(1) = {:.6}", 1.0f64.sin());
    println!(
        "float: cos(pi/3) = {:.6}",
        (std::f64::consts::PI / 3.0).cos()
    );
    println!("float: 2^0.5 = {:.6}", x.powf(0.5));
    println!(
        "float: e^1.5 = {:.6} ln(10) = {:.6}",
        1.5f64.exp(),
        10f64.ln()
    );
    println!("float: atan2(1, 1) = {:.6}", 1.0f64.atan2(1.0));
    println!("float: f32 1/3 = {:.6}", 1.0f32 / 3.0);
    println!("float: 0.1 + 0.2 = {}", 0.1 + 0.2);
    println!("float: parse 6.25 = {:?}", "6.25".parse::<f64>());
    println!(
        "float: floor {} ceil {} round {}",
        2.5f64.floor(),
        2.5f64.ceil(),
        2.5f64.round()
    );
    println!(
        "int: 2^40 = {} checked overflow = {:?}",
        1u64 << 40,
        i32::MAX.checked_add(1)
    );
}
