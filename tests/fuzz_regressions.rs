//! Replays every input kept in `fuzz/regressions/<target>/` (each crash the fuzzer found, and
//! the seeds) through its target in `robusto::fuzzing`: a property that breaks again panics here,
//! on stable, without the fuzzer. `bash fuzz/run.sh` runs the fuzzer itself.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz"))
}

/// The names of the files in `dir` ending in `ext`, without it.
fn stems(dir: &Path, ext: &str) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(ext).map(str::to_string))
        .collect()
}

#[test]
fn every_fuzz_target_has_a_function_and_regression_inputs() {
    let listed: BTreeSet<String> = robusto::fuzzing::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        listed.len(),
        robusto::fuzzing::TARGETS.len(),
        "a target is listed twice"
    );
    let targets = stems(&fuzz_dir().join("fuzz_targets"), ".rs");
    assert_eq!(
        targets, listed,
        "fuzz/fuzz_targets/*.rs and robusto::fuzzing::TARGETS differ"
    );
    let kept: BTreeSet<String> = fs::read_dir(fuzz_dir().join("regressions"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, listed, "fuzz/regressions/ must have one folder per target");
    for t in &targets {
        let source = fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{t}.rs"))).unwrap();
        assert!(
            source.contains(&format!("robusto::fuzzing::{t}(data)")),
            "fuzz/fuzz_targets/{t}.rs does not call robusto::fuzzing::{t}"
        );
    }
}

#[test]
fn regression_inputs_replay_clean() {
    let mut replayed = 0;
    for (name, target) in robusto::fuzzing::TARGETS {
        let dir = fuzz_dir().join("regressions").join(name);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no input", dir.display());
        for file in files {
            let bytes = fs::read(&file).unwrap();
            let run = std::panic::catch_unwind(|| target(&bytes));
            assert!(run.is_ok(), "{name}: {} breaks a property again", file.display());
            replayed += 1;
        }
    }
    println!("replayed {replayed} inputs");
}
