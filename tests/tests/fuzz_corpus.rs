//! The fuzz targets' short run in the test suite: every committed seed of `fuzz/corpus/TARGET`
//! (and every crash input kept under `fuzz/regressions/TARGET`), then a fixed number of
//! deterministic mutations of each, through the same entry points libFuzzer drives
//! (`barnabas::fuzzing`). A panic fails the test; the long coverage-guided campaigns are
//! `make fuzz-long` (RELIABILITY.md).

use std::path::{Path, PathBuf};

/// A small deterministic generator (xorshift64*), so a failing mutation can be found again.
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

/// One mutation of `seed`: flipped bits, overwritten or inserted bytes (often boundary values),
/// a cut, or a block copied from elsewhere, the kinds of change libFuzzer starts from.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x40, 0xc0, 0xd0][rng.below(8)];
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if len > 1 => data.truncate(rng.below(len)),
            4 if len > 4 => {
                let from = rng.below(len - 4);
                let n = 1 + rng.below((len - from).min(64));
                let block: Vec<u8> = data[from..from + n].to_vec();
                let at = rng.below(len);
                data.splice(at..at, block);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                data.remove(i);
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut found = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                found.push((path, bytes));
            }
        }
    }
    found.sort();
    found
}

fn short_run(target: &str, run: fn(&[u8]), mutations: usize) {
    let seeds = inputs(target);
    assert!(!seeds.is_empty(), "no seed corpus for {target}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (path, seed) in &seeds {
        run(seed);
        for i in 0..mutations {
            let input = mutate(seed, &mut rng);
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(
                outcome.is_ok(),
                "{target}: mutation {i} of {} panicked; input (hex): {}",
                path.display(),
                input.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
    }
}

#[test]
fn mqtt_decoder_short_run() {
    short_run("mqtt_decoder", barnabas::fuzzing::mqtt_decoder, 20_000);
}

#[test]
fn amqp_guard_short_run() {
    short_run("amqp_guard", barnabas::fuzzing::amqp_guard, 20_000);
}

#[test]
fn routes_yaml_short_run() {
    short_run("routes_yaml", barnabas::fuzzing::routes_yaml, 2_000);
}
