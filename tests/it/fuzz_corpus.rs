//! The committed fuzz corpus (`fuzz/corpus/{target}/`), replayed through the
//! fuzz targets in `batch_worker::fuzzing` as ordinary tests.
//!
//! `cargo fuzz` needs nightly and runs for minutes; these run in CI with
//! every `cargo test`, so every input the fuzzer kept (the seeds, the
//! inputs that reached new code, and every past crash) goes through the
//! same checks on every change: a fixed crash stays fixed. See TESTING.md,
//! "Fuzzing".

use std::path::PathBuf;

/// Runs every file of `fuzz/corpus/{target}/` through `run`; panics (with
/// the file's name) on the first input that fails, and if the corpus has
/// 10 files or fewer (a missing or emptied corpus would pass silently).
fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            std::panic::resume_unwind(Box::new(format!(
                "{} fails: {}",
                file.display(),
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(a non-text panic)")
            )));
        }
    }
    assert!(
        files.len() > 10,
        "{}: only {} inputs; the corpus is missing or was emptied",
        dir.display(),
        files.len()
    );
}

#[test]
fn create_body_corpus() {
    replay("create_body", batch_worker::fuzzing::create_body);
}

#[test]
fn bunch_corpus() {
    replay("bunch", batch_worker::fuzzing::bunch);
}

#[test]
fn journal_corpus() {
    replay("journal", batch_worker::fuzzing::journal);
}
