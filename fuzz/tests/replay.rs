//! Every fuzz target over its committed corpus (`corpus/<target>/`, regression inputs from
//! crashes included) and over random inputs: stable Rust, part of CI. The random inputs are
//! mutations of the corpus files (bit flips, truncations, splices) and plain noise, from a
//! seeded generator, so a failure replays; `FUZZ_REPLAY_RANDOM` sets how many per target.

use std::path::Path;

/// xorshift64*: a seeded generator, enough to mutate inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .filter_map(|e| {
                    let bytes = std::fs::read(e.path()).ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), bytes))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn mutate(rng: &mut Rng, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut input = if seeds.is_empty() || rng.below(8) == 0 {
        (0..rng.below(512)).map(|_| rng.next() as u8).collect()
    } else {
        seeds[rng.below(seeds.len())].1.clone()
    };
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            2 => input.truncate(rng.below(input.len() + 1)),
            3 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len() + 1);
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(input.len() + 1);
                let value = [0u8, 0xff, 0x7f, 0x80][rng.below(4)];
                input.splice(at..at, std::iter::repeat_n(value, rng.below(9)));
            }
        }
    }
    input
}

#[test]
fn every_target_survives_its_corpus_and_random_inputs() {
    let random: usize = std::env::var("FUZZ_REPLAY_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for &(name, target) in fusion_fuzz::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "target {name} has no corpus");
        for (file, bytes) in &seeds {
            let outcome = std::panic::catch_unwind(|| target(bytes));
            assert!(outcome.is_ok(), "{name}: corpus file {file} panics");
        }
        let mut rng = Rng(0x5eed ^ name.len() as u64);
        for round in 0..random {
            let input = mutate(&mut rng, &seeds);
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(
                outcome.is_ok(),
                "{name}: random input {round} panics: {input:02x?}"
            );
        }
    }
}
