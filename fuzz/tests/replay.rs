//! Every fuzz target over its committed corpus and its seeds, then over a bounded number of
//! random mutations of them, on stable Rust. A panic is reported with the input, which is
//! written to `target/test-output/fuzz/` so it can become a unit test.
//!
//! `AFFINITY_FUZZ_SEED` (a number) repeats a run; `AFFINITY_FUZZ_ITERATIONS` sets the
//! mutations per target (default 20000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use affinity_fuzz::{TARGETS, seeds};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs = seeds(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        inputs.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    inputs
}

fn mutate(rng: &mut fastrand::Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        match rng.u8(0..6) {
            0 if !out.is_empty() => {
                let i = rng.usize(0..out.len());
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.usize(0..out.len());
                out[i] = rng.u8(..);
            }
            2 => {
                let i = rng.usize(0..=out.len());
                out.insert(
                    i,
                    rng.choice([0u8, 0x7f, 0x80, 0xff, b':', b'/', b'{'])
                        .unwrap(),
                );
            }
            3 if !out.is_empty() => {
                let cut = rng.usize(0..out.len());
                out.truncate(cut);
            }
            4 if !others.is_empty() => {
                let other = &others[rng.usize(0..others.len())];
                let at = rng.usize(0..=out.len());
                let from = rng.usize(0..=other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ if !out.is_empty() => {
                // Repeat a slice: lengths and counts that run past the data.
                let start = rng.usize(0..out.len());
                let end = rng.usize(start..=out.len());
                let slice = out[start..end].to_vec();
                out.splice(start..start, slice);
            }
            _ => out.push(rng.u8(..)),
        }
    }
    out
}

fn run(target: &str, f: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-output/fuzz")
            .join(target);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("crash-{:016x}", fastrand::u64(..)));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target {target} panicked on {} bytes (saved to {}): {:02x?}",
            input.len(),
            path.display(),
            &input[..input.len().min(256)]
        );
    }
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let seed = std::env::var("AFFINITY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let iterations: usize = std::env::var("AFFINITY_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    eprintln!("fuzz replay: AFFINITY_FUZZ_SEED={seed}, {iterations} mutations per target");
    let mut rng = fastrand::Rng::with_seed(seed);
    for (target, f) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "{target} has no seeds");
        for input in &inputs {
            run(target, f, input);
        }
        for _ in 0..iterations {
            let base = &inputs[rng.usize(0..inputs.len())];
            let input = mutate(&mut rng, base, &inputs);
            run(target, f, &input);
        }
    }
}

#[test]
fn seeds_are_accepted_by_their_decoders() {
    // The seeds are valid inputs, so mutations start from deep inside each decoder.
    for snapshot in seeds("snapshot") {
        affinity_server::sm::snapshot::read(snapshot.as_slice()).expect("the seed snapshot reads");
    }
    for record in seeds("log_entry") {
        let (_, body) = record.split_first_chunk::<8>().unwrap();
        affinity_server::store::log::decode_entry(7, body).expect("the seed record decodes");
    }
    for file in seeds("routes") {
        affinity_gateway::backends::Loaded::parse(std::str::from_utf8(&file).unwrap())
            .expect("the seed route file loads");
    }
}
