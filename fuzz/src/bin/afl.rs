//! Runs one fuzz target under AFL++: `cargo afl build --features afl`, then
//! `cargo afl fuzz -i corpus/NAME -o out/NAME target/debug/afl NAME` (README, Fuzzing).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = fusion_fuzz::target(&name) else {
        let names: Vec<&str> = fusion_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: afl TARGET, one of {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
