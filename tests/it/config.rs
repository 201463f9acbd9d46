//! Configuration: a TOML file (`--config`), `BATCH_WORKER_*` environment
//! variables and flags, in that order of precedence; `batch-worker config`
//! prints the result with each value's source, secrets masked.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::HANG_GUARD;

const SECRET: &str = "ACTIVATION-9e1d-do-not-print";

fn worker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batch-worker"));
    // The test's own environment must not configure the child.
    for (name, _) in std::env::vars() {
        if name.starts_with("BATCH_WORKER_") {
            command.env_remove(name);
        }
    }
    command
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of `name` in `config`'s output.
fn line<'a>(printed: &'a str, name: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{name} =")))
        .unwrap_or_else(|| panic!("no {name} line in {printed}"))
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_and_secrets_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"0.0.0.0:6000\"\ndata_dir = \"/srv/worker\"\ncores = 1.5\nname = \"from-file\"\n\
             repair = true\nactivation-token = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let out = worker()
        .args(["config", "--config"])
        .arg(&file)
        .args(["--name", "from-flag"])
        .env("BATCH_WORKER_CORES", "3")
        .env("BATCH_WORKER_NAME", "from-env")
        .env("BATCH_WORKER_RETENTION_HOURS", "48")
        .output()
        .unwrap();
    let (printed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(line(&printed, "listen").contains("\"0.0.0.0:6000\""));
    assert!(line(&printed, "listen").ends_with("# config file"));
    assert!(line(&printed, "data-dir").contains("/srv/worker"));
    assert!(line(&printed, "cores").starts_with("cores = 3 "));
    assert!(line(&printed, "cores").ends_with("# environment"));
    assert!(line(&printed, "name").contains("\"from-flag\""));
    assert!(line(&printed, "name").ends_with("# flag"));
    assert!(line(&printed, "retention-hours").starts_with("retention-hours = 48 "));
    assert!(line(&printed, "repair").starts_with("repair = true "));
    assert!(line(&printed, "durability").ends_with("# default"));
    assert!(line(&printed, "activation-token").contains("<redacted>"));
    assert!(!printed.contains(SECRET) && !stderr.contains(SECRET));
    // What it prints is itself a config file: TOML whose keys are flags.
    let table: toml::Table = printed.parse().unwrap();
    assert_eq!(table["cores"].as_integer(), Some(3));

    // --help shows the file's values as defaults, but not a secret.
    let help = worker()
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--help")
        .output()
        .unwrap();
    let (help, _) = text(&help);
    assert!(help.contains("[default: from-file]"), "{help}");
    assert!(!help.contains(SECRET), "{help}");

    // URLs lose passwords and query strings (SAS tokens); odd numbers stay
    // strings, so the output reads back.
    let out = worker()
        .args(["config", "--driver-url", "http://u:PASSWORD@driver:5000/"])
        .args(["--spec-store", "az://c/p?sig=SASTOKEN", "--cores", ".5"])
        .output()
        .unwrap();
    let (printed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !printed.contains("PASSWORD") && !printed.contains("SASTOKEN"),
        "{printed}"
    );
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let out = worker()
        .args(["config", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn bad_config_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "bogus-key = 1\n",
            "unknown key \"bogus-key\"",
        ),
        (
            "type.toml",
            "listen = [1]\n",
            "gives \"listen\" a value of the wrong type",
        ),
        ("toml.toml", "listen = \n", "is not valid TOML"),
        (
            "secret.toml",
            "activation-token = \"TOMLSECRET\n",
            "is not valid TOML: invalid basic string, expected `\"` at line 1",
        ),
        (
            "twice.toml",
            "data-dir = \"a\"\ndata_dir = \"b\"\n",
            "sets one flag twice",
        ),
        (
            "value.toml",
            "max-body-bytes = \"abc\"\n",
            "'--max-body-bytes <MAX_BODY_BYTES>': invalid digit found in string (the value comes from the config file",
        ),
    ];
    for (name, content, expected) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let out = worker()
            .args(["serve", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("TOMLSECRET"), "{name}: {stderr}");
    }
    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, "# padding\n".repeat(200_000)).unwrap();
    let out = worker()
        .args(["serve", "--config"])
        .arg(&huge)
        .output()
        .unwrap();
    assert!(
        text(&out).1.contains("the limit is 1048576"),
        "{}",
        text(&out).1
    );
    let out = worker()
        .arg("serve")
        .env("BATCH_WORKER_CORES", "lots")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("(the value comes from the environment variable BATCH_WORKER_CORES)"),
        "{stderr}"
    );
    let out = worker()
        .args(["serve", "--config"])
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert!(text(&out).1.contains("cannot read the config file"));
}

#[tokio::test]
async fn serve_runs_with_what_the_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("worker.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata-dir = {:?}\nname = \"configured\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut child = worker()
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthcheck");
    // The child's start is not an event this test can wait on: poll.
    let health: serde_json::Value = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(answer) = reqwest::get(&url).await {
                break answer.json().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker listens where the file says");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(health["name"], "configured");
    assert!(data.join("journal").is_dir());
}

#[test]
fn a_value_the_start_refuses_says_where_it_came_from_and_config_refuses_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // From the environment
    let out = worker()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("BATCH_WORKER_CORES", "0")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--cores: expected a number of cores from 0.001 (1 mcpu) up, got 0 (the value comes from the environment variable BATCH_WORKER_CORES)"),
        "{stderr}"
    );
    // From the file, for an executor flag whatever the executor
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "image-pulls-max = 0\n").unwrap();
    let out = worker()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--image-pulls-max: at least 1 (the value comes from the config file {})",
            file.display()
        )),
        "{stderr}"
    );
    // A flag's own value is just refused
    let out = worker().args(["config", "--cores", "0"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.ends_with("got 0\n"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    // and nothing was made.
    assert!(!data.exists());
}

/// The long flags (`--name`) a help text lists.
fn flags(help: &str) -> std::collections::BTreeSet<String> {
    help.split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| {
            flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .filter(|flag| !flag.is_empty() && !flag.contains(['`', '\'']))
        .collect()
}

#[test]
fn help_is_grouped_by_concern_and_hides_the_test_knobs_that_help_all_lists() {
    let help = |args: &[&str]| {
        let out = worker().args(args).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let serve = help(&["serve", "--help"]);
    for heading in [
        "API:",
        "Stores and spec loading:",
        "Driver:",
        "Jobs and executor:",
        "Journal:",
        "Containers and registry:",
        "Logging:",
    ] {
        assert!(
            serve.lines().any(|l| l == heading),
            "no {heading} in\n{serve}"
        );
    }
    let test_knobs = ["blob-latency-ms", "token-latency-ms", "token-latency-seed"];
    for knob in test_knobs {
        assert!(!serve.contains(&format!("--{knob}")), "{knob} in\n{serve}");
    }
    // A heading holds its flags: --memory is under "Jobs and executor".
    let jobs: String = serve
        .lines()
        .skip_while(|l| *l != "Jobs and executor:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect();
    assert!(
        jobs.contains("--memory") && jobs.contains("--cores"),
        "{jobs}"
    );
    // --memory says what its units mean.
    assert!(serve.contains("8G or 8GB is 8 × 10^9"), "{serve}");

    let all = help(&["serve", "--help-all"]);
    assert!(all.lines().any(|l| l == "Testing:"), "{all}");
    for knob in test_knobs {
        assert!(all.contains(&format!("--{knob}")), "{knob} not in\n{all}");
    }
    // --help-all lists every flag --help does, and more.
    assert!(flags(&all).is_superset(&flags(&serve)));

    // The hidden knobs still work when passed.
    let out = worker()
        .args([
            "config",
            "--blob-latency-ms",
            "7",
            "--token-latency-seed",
            "9",
        ])
        .output()
        .unwrap();
    let (printed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(line(&printed, "blob-latency-ms").starts_with("blob-latency-ms = 7 "));
    assert!(line(&printed, "token-latency-seed").ends_with("# flag"));

    // `spec show` lists only its own flags, even with --help-all.
    let spec = help(&["spec", "show", "--help-all"]);
    let own: std::collections::BTreeSet<String> = [
        "store",
        "batch",
        "token",
        "start",
        "job",
        "store-options",
        "spec-max-bytes",
        "spec-timeout-ms",
        "spec-read-attempts",
        "log-format",
        "help",
        "help-all",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let listed: std::collections::BTreeSet<String> = spec
        .lines()
        .filter(|l| l.trim_start().starts_with("--") || l.trim_start().starts_with("-h,"))
        .flat_map(|l| flags(l.split("  ").find(|p| !p.trim().is_empty()).unwrap_or(l)))
        .collect();
    assert_eq!(listed, own, "{spec}");
    for flag in ["kill-grace-ms", "spec-load-concurrency", "blob-latency-ms"] {
        assert!(!spec.contains(&format!("--{flag}")), "{flag} in\n{spec}");
    }
}

#[test]
fn config_prints_what_serve_derives_and_stays_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::path::absolute(dir.path()).unwrap();
    let out = worker().arg("config").current_dir(&cwd).output().unwrap();
    let (printed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let data = cwd.join("batch-worker-data");
    // The spec store serve would open, not "(unset)".
    assert!(!printed.contains("spec-store (unset)"), "{printed}");
    let spec_store = printed
        .lines()
        .find(|l| l.starts_with("# spec-store = "))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        spec_store.contains(&format!("\"file://{}/specs\"", data.display())),
        "{spec_store}"
    );
    assert!(
        spec_store.ends_with("# unset: {data-dir}/specs"),
        "{spec_store}"
    );
    let data_dir = line(&printed, "data-dir");
    assert!(
        data_dir.contains(&format!("{}/journal", data.display())),
        "{data_dir}"
    );
    for (name, dir) in [("logs-store", "logs"), ("image-cache-dir", "images")] {
        let l = printed
            .lines()
            .find(|l| l.starts_with(&format!("# {name} = ")))
            .unwrap_or_else(|| panic!("no {name} in {printed}"));
        assert!(l.contains(&format!("{}/{dir}", data.display())), "{l}");
    }
    // The machine's cores and memory, in bytes with a unit beside them.
    let memory = printed
        .lines()
        .find(|l| l.starts_with("# memory = "))
        .unwrap_or_else(|| panic!("{printed}"));
    let bytes: u64 = memory["# memory = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 0, "{memory}");
    assert!(
        memory.contains("the machine's") && memory.contains("GiB)"),
        "{memory}"
    );
    assert!(printed.contains("\n# cores = "), "{printed}");
    // Nothing was made, and the output is TOML and a config file.
    assert!(!data.exists());
    let table: toml::Table = printed.parse().unwrap();
    assert_eq!(table["executor"].as_str(), Some("host"));
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let out = worker()
        .args(["config", "--config"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);

    // --memory 8G is 8 × 10^9 bytes, and config says so.
    let out = worker()
        .args(["config", "--memory", "8G", "--spec-store", "memory://"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let (printed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let memory = line(&printed, "memory");
    assert!(memory.starts_with("memory = 8000000000 "), "{memory}");
    assert!(
        memory.ends_with("# flag: 8G = 8.0 GB (7.45 GiB)"),
        "{memory}"
    );
    assert!(line(&printed, "spec-store").ends_with("# flag"));
    let table: toml::Table = printed.parse().unwrap();
    assert_eq!(table["memory"].as_integer(), Some(8_000_000_000));
}

#[test]
fn serve_names_what_it_runs_with_in_its_first_log_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = worker()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--memory",
            "8G",
            "--cores",
            "1.5",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Reading the first line waits for it (the child's own event).
    let first = std::io::BufReader::new(stderr)
        .lines()
        .next()
        .unwrap()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.contains("batch-worker starting"), "{first}");
    for field in [
        "cores=\"1.5\"",
        "memory_bytes=8000000000",
        "memory=\"8.0 GB (7.45 GiB)\"",
        "executor=Host",
        "spec_store=\"file://",
        "logs_store=\"file://",
        "driver_url=\"none",
    ] {
        assert!(first.contains(field), "{field} not in {first}");
    }
}
