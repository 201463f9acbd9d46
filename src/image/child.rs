//! A pull in a child process: `{program} image pull --json ...` with its
//! memory limited (`RLIMIT_DATA`), its own scratch directory, and its
//! answer read from stdout (bounded). The registry client reads manifests,
//! configs and token answers whole; here a hostile answer costs one job's
//! pull, not the worker.
//!
//! The child is killed when the pull's future is dropped (cancel, the
//! parent's timeout); its scratch directory is removed however it ended.
//! A child whose worker is SIGKILLed runs on until its own
//! `--image-pull-timeout-s`; the next start clears `tmp/`.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{ImageConfig, PullError, PullProcess};

/// Most of the child's stdout read: 64 KiB (its answer is one line).
const MAX_ANSWER_BYTES: u64 = 64 << 10;
/// The end of the child's stderr kept for the error message: 2 KiB.
const STDERR_TAIL_BYTES: usize = 2 << 10;

/// What `image pull --json` prints: one JSON object on one line.
///
/// `{"reference": "r/x:1", "digest": "sha256:…", "downloaded": true}`, or
/// `{"reference": "r/x:1", "error": "the image does not exist …"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// The reference as given.
    pub reference: String,
    /// The manifest digest it resolved to (`sha256:<64 hex>`), on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether this pull downloaded the image (`false`: it was cached).
    #[serde(default)]
    pub downloaded: bool,
    /// Why the pull failed, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Pulls `reference` into `config.cache_dir` in a child process; returns
/// the manifest digest and whether the child downloaded it.
///
/// # Errors
/// [`PullError::Child`] with the child's own error, or
/// [`PullError::ChildDied`] when it could not start or ended without an
/// answer (over its memory limit, killed), with the end of its stderr.
pub(super) async fn pull(
    config: &ImageConfig,
    process: &PullProcess,
    reference: &str,
) -> Result<(String, bool), PullError> {
    let nonce: u64 = rand::random();
    let scratch = config
        .cache_dir
        .join("tmp")
        .join(format!("pull-{nonce:016x}"));
    tokio::fs::create_dir_all(&scratch)
        .await
        .map_err(|source| PullError::Io {
            path: scratch.clone(),
            source,
        })?;
    let _scratch = RemoveLater(scratch.clone());
    let mut command = Command::new(&process.program);
    command
        .args(["image", "pull", "--json", "--image-cache-dir"])
        .arg(&config.cache_dir)
        .arg("--scratch-dir")
        .arg(&scratch)
        .arg("--image-max-bytes")
        .arg(config.max_image_bytes.to_string())
        .arg("--image-pull-timeout-s")
        .arg(config.pull_timeout.as_secs().max(1).to_string())
        .arg("--registry-retry-delay-ms")
        .arg(config.retry_delay.as_millis().to_string())
        .arg("--registry-max-attempts")
        .arg(config.max_attempts.to_string());
    if let Some(path) = &config.auth_file {
        command.arg("--registry-auth-file").arg(path);
    }
    if !config.insecure_registries.is_empty() {
        command
            .arg("--insecure-registry")
            .arg(config.insecure_registries.join(","));
    }
    command
        .arg("--")
        .arg(reference)
        .env("RUST_LOG", "warn")
        // A panic near the memory limit must end the child, not wait on the
        // backtrace lock that an allocation failure also takes.
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limit = process.max_memory_bytes;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setrlimit, which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| PullError::ChildDied {
        message: format!("{} could not start: {e}", process.program.display()),
    })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (answer, stderr_tail, status) =
        tokio::join!(read_answer(stdout), read_tail(stderr), child.wait());
    let status = status.map_err(|e| PullError::ChildDied {
        message: format!("could not be waited for: {e}"),
    })?;
    let report = answer
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<PullReport>(line).ok());
    match report {
        Some(PullReport {
            digest: Some(digest),
            downloaded,
            error: None,
            ..
        }) if status.success() => Ok((digest, downloaded)),
        Some(PullReport {
            error: Some(message),
            ..
        }) => Err(PullError::Child { message }),
        _ => Err(PullError::ChildDied {
            message: died(status, limit, &stderr_tail),
        }),
    }
}

/// How the child ended without an answer, in words.
fn died(status: ExitStatus, limit: u64, stderr_tail: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut message = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code} without an answer"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended without an answer".to_owned(),
    };
    if status.signal() == Some(libc::SIGABRT) || stderr_tail.contains("memory allocation") {
        message.push_str(&format!(
            " (over its memory limit of {limit} bytes, --image-pull-max-memory?)"
        ));
    }
    let tail = stderr_tail.trim();
    if !tail.is_empty() {
        message.push_str(": ");
        message.push_str(tail);
    }
    message
}

/// The child's stdout, at most [`MAX_ANSWER_BYTES`] (the rest is drained
/// so the child never blocks on a full pipe).
async fn read_answer(out: impl AsyncRead + Unpin) -> String {
    let mut bytes = Vec::new();
    let mut limited = out.take(MAX_ANSWER_BYTES);
    let _ = limited.read_to_end(&mut bytes).await;
    let _ = tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last [`STDERR_TAIL_BYTES`] of the child's stderr.
async fn read_tail(mut err: impl AsyncRead + Unpin) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = err.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// Removes a pull's scratch directory when dropped, on a blocking thread
/// (a half-unpacked image may be large), retrying while a killed child
/// may still be writing.
struct RemoveLater(PathBuf);

impl Drop for RemoveLater {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.0);
        let remove = move || {
            for _ in 0..5 {
                match std::fs::remove_dir_all(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(std::time::Duration::from_millis(100))
                    }
                    _ => return,
                }
            }
            tracing::warn!(path = %path.display(), "a pull's scratch directory was not removed");
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_child_that_dies_is_described_with_its_last_words() {
        let aborted = ExitStatus::from_raw(libc::SIGABRT);
        let message = died(
            aborted,
            1 << 30,
            "memory allocation of 4294967296 bytes failed\n",
        );
        assert_eq!(
            message,
            "was killed by signal 6 (over its memory limit of 1073741824 bytes, \
             --image-pull-max-memory?): memory allocation of 4294967296 bytes failed"
        );
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(died(exited, 1, ""), "exited with code 3 without an answer");
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_read_within_bounds() {
        let big = vec![b'x'; 1 << 20];
        let answer = read_answer(&big[..]).await;
        assert_eq!(answer.len() as u64, MAX_ANSWER_BYTES);
        let mut noisy = vec![b'a'; 100_000];
        noisy.extend_from_slice(b"the end");
        let tail = read_tail(&noisy[..]).await;
        assert_eq!(tail.len(), STDERR_TAIL_BYTES);
        assert!(tail.ends_with("the end"));
    }

    #[test]
    fn reports_round_trip_as_one_json_line() {
        let report = PullReport {
            reference: "r/x:1".into(),
            digest: Some(format!("sha256:{}", "ab".repeat(32))),
            downloaded: true,
            error: None,
        };
        let line = serde_json::to_string(&report).unwrap();
        assert!(!line.contains('\n') && !line.contains("error"), "{line}");
        assert_eq!(serde_json::from_str::<PullReport>(&line).unwrap(), report);
    }
}
