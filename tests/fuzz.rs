//! Mutation fuzzing of every parser that takes repository or agent bytes: tree, index, snapshot and
//! config JSON (with the rules restore and verify apply to them) and the agent's wire protocol. Seeds
//! are real objects in tests/fuzz-corpus/<target>/; mutations are deterministic (seeded), and each
//! target runs for a fixed time: 2 s by default, `STACKVAULT_FUZZ_SECS` seconds each when set.
//! Every call must return, without a panic, within a second. A failing input is written to
//! target/fuzz-failures/ for replay.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stackvault::repo::format::{RepoConfig, Snapshot, Tree};
use stackvault::repo::packindex::PackIndex;
use stackvault::repo::tree::{check_snapshot, check_tree};
use stackvault::repo::Index;
use stackvault::source::wire::EventReader;
use stackvault::source::{Event, EventSource};

/// A small xorshift generator: the same seed gives the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING_NUMBERS: &[&str] = &[
    "0", "-1", "1", "255", "256", "4095", "4096", "65535", "65536", "4294967295", "4294967296", "67108864", "67108865",
    "9223372036854775807", "-9223372036854775808", "18446744073709551615", "18446744073709551616", "1e3", "0.5", "-0",
];
const INTERESTING_TOKENS: &[&str] = &[
    "\"", "{", "}", "[", "]", ",", ":", "null", "\\u0000", "\"..\"", "\"/\"", "{\"hex\":\"ff\"}", "{\"hex\":\"61\"}", "\"dir\"", "\"hardlink\"",
];
const INTERESTING_U32: &[u32] = &[0, 1, 31, 32, 512, 1 << 20, 16 << 20, (16 << 20) + 1, u32::MAX / 2, u32::MAX];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(10) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0u8, 0xff, b'/', b'.', b'"', b'\\', 0x80][rng.below(7)];
            }
            2 => {
                let n = rng.below(8) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            3 if !data.is_empty() => {
                let end = (at + rng.below(64) + 1).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => {
                // A decimal number in the text becomes an interesting one.
                let digits = data.iter().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect::<Vec<_>>();
                if let Some(&start) = digits.get(rng.below(digits.len())) {
                    let end = data[start..].iter().position(|b| !b.is_ascii_digit()).map_or(data.len(), |n| start + n);
                    let number = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())].as_bytes();
                    data.splice(start..end, number.iter().copied());
                }
            }
            5 => {
                let token = INTERESTING_TOKENS[rng.below(INTERESTING_TOKENS.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            6 if data.len() >= 4 => {
                // A little-endian length field of the wire protocol becomes an interesting one.
                let i = rng.below(data.len() - 3);
                data[i..i + 4].copy_from_slice(&INTERESTING_U32[rng.below(INTERESTING_U32.len())].to_le_bytes());
            }
            7 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(256)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            8 if data.len() > 1 => {
                // Duplicate a span: repeated keys, repeated entries.
                let end = (at + rng.below(128) + 1).min(data.len());
                let span = data[at.min(end)..end].to_vec();
                data.splice(end..end, span);
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn seconds_per_target() -> f64 {
    std::env::var("STACKVAULT_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0)
}

/// Feeds the seeds, then mutations of them, to `parse` for the configured time. `parse` says whether
/// it accepted the input: accepted mutations are mutated further, which reaches the checks behind
/// the parser far more often than mutating the seeds alone.
fn fuzz(target: &str, parse: impl Fn(&[u8]) -> bool) {
    let seeds = corpus(target);
    let budget = Duration::from_secs_f64(seconds_per_target());
    let seed = std::env::var("STACKVAULT_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe_f00d_u64);
    let mut rng = Rng(seed | 1);
    let clock = Instant::now();
    let (mut runs, mut accepted) = (0u64, 0u64);
    let mut pool = seeds.clone();
    while runs < seeds.len() as u64 || clock.elapsed() < budget {
        let input = match seeds.get(runs as usize) {
            Some(seed) => seed.clone(),
            None => {
                // Half from the seeds, so that the pool cannot drift to trivial inputs only.
                let from = if rng.below(2) == 0 { &seeds } else { &pool };
                let parent = rng.below(from.len());
                mutate(&mut rng, &from[parent], &seeds)
            }
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(&input)));
        let took = started.elapsed();
        if outcome.is_err() || took > Duration::from_secs(1) {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{}", &blake3::hash(&input).to_hex()[..16]));
            std::fs::write(&path, &input).unwrap();
            let why = if outcome.is_err() { "panicked".to_string() } else { format!("took {took:?}") };
            panic!("fuzz target {target} {why} on input saved to {}", path.display());
        }
        if outcome.unwrap_or(false) {
            accepted += 1;
            // Replacing at random keeps the pool varied without letting it grow.
            match pool.len() < 1024 {
                true => pool.push(input),
                false => pool[rng.below(1024)] = input,
            }
        }
        runs += 1;
    }
    eprintln!("fuzz {target}: {runs} inputs ({accepted} parsed) in {:.1} s", clock.elapsed().as_secs_f64());
}

fn seed_index() -> Index {
    let mut index = Index::temporary().unwrap();
    for bytes in corpus("index") {
        index.add(&parse_index(&bytes).expect("index seeds parse")).unwrap();
    }
    index
}

#[test]
fn fuzz_tree() {
    let index = seed_index();
    fuzz("tree", |bytes| {
        serde_json::from_slice::<Tree>(bytes).map(|tree| check_tree(&tree, &index, 1 << 20)).is_ok()
    });
}

#[test]
fn fuzz_index() {
    fuzz("index", |bytes| parse_index(bytes).is_some());
}

/// An index object of either version; bytes that are not one are also tried as the decompressed table
/// of version 2, so that mutations reach the table's parser and not only zstd's.
fn parse_index(bytes: &[u8]) -> Option<PackIndex> {
    const LIMIT: u64 = stackvault::repo::MAX_INDEX_TABLE;
    PackIndex::decode(bytes, LIMIT).or_else(|_| PackIndex::decode(&zstd::bulk::compress(bytes, 1).unwrap(), LIMIT)).ok()
}

#[test]
fn fuzz_snapshot() {
    let index = seed_index();
    let config: RepoConfig = serde_json::from_slice(&corpus("config")[0]).unwrap();
    fuzz("snapshot", |bytes| {
        serde_json::from_slice::<Snapshot>(bytes).map(|snapshot| check_snapshot(&snapshot, &index, &config)).is_ok()
    });
}

#[test]
fn fuzz_config() {
    fuzz("config", |bytes| {
        serde_json::from_slice::<RepoConfig>(bytes).map(|config| config.check()).is_ok()
    });
}

#[test]
fn fuzz_wire() {
    fuzz("wire", |bytes| {
        let mut events = EventReader::new(bytes);
        // Each frame takes at least its 5-byte head, so a finite input ends the loop.
        let mut whole = false;
        while let Ok(event) = events.next_event() {
            if event == Event::End {
                whole = true;
                break;
            }
        }
        let mut stamps = EventReader::new(bytes);
        let all_stamps = loop {
            match stamps.next_stamp() {
                Ok(Some(_)) => continue,
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        whole | all_stamps
    });
}
