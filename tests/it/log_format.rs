//! `--log-format json`: one JSON object per stderr line, and every line an
//! attempt's task logs carries the `attempt` span's `batch_id`, `job_id`
//! and `attempt_id`.

use serde_json::Value;

#[test]
fn json_logs_are_one_object_per_line_and_attempt_lines_carry_the_span() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["--log-format", "json", "demo", "--jobs", "4", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "batch_worker=info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let in_attempt: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "attempt")
        .collect();
    assert!(
        !in_attempt.is_empty(),
        "no line in an attempt span: {stderr}"
    );
    for line in in_attempt {
        let span = &line["span"];
        assert!(span["batch_id"].is_i64(), "{line}");
        assert!(span["job_id"].is_i64(), "{line}");
        assert!(
            span["attempt_id"].as_str().is_some_and(|a| !a.is_empty()),
            "{line}"
        );
    }
}
