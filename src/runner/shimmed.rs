//! Host jobs under a shim, seen from the worker (see [`crate::shim`] for
//! the shim's side): [`HostRunner`]'s spawn through a shim, the
//! [`ShimHandle`] that starts one (launch on stdin, handshake) or finds one
//! again after a restart, the [`Process`] that waits on it (its child, or a
//! pidfd) and reads `exit.json`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_worker_model::ExitStatus;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{
    exit_status, make_work, resolve, HostRunner, JobUser, LaunchError, Process, ProcessRequest,
    ShimConfig, JOB_NICENESS,
};
use crate::cgroup::{Cgroups, JobCgroup};
use crate::shim::Handshake;

impl HostRunner {
    /// Spawns `request`'s job under a shim: starts `batch-worker shim
    /// ATTEMPT_DIR` in a session of its own, gives it the job's launch on
    /// its stdin, and reads the job's pid from its handshake.
    pub(super) async fn spawn_with_shim(
        &self,
        shim: &ShimConfig,
        request: &ProcessRequest,
    ) -> Result<Box<dyn Process>, LaunchError> {
        let (request, user, cgroups) =
            (request.clone(), self.job_user.clone(), self.cgroups.clone());
        let (binary, kill_grace) = (shim.binary.clone(), self.kill_grace);
        let bounds = (shim.max_log_bytes, shim.default_storage_bytes);
        let prepared = tokio::task::spawn_blocking(move || {
            prepare_shim(
                &request,
                user.as_ref(),
                cgroups.as_ref(),
                bounds,
                kill_grace,
            )
            .map(|(cgroup, launch)| (request, cgroup, launch))
        })
        .await
        .map_err(|e| LaunchError(format!("the spawning thread failed: {e}")))??;
        let (request, cgroup, launch) = prepared;
        let launch: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(
            serde_json::to_vec(&launch)
                .map_err(|e| LaunchError(format!("the shim's launch: {e}")))?,
        );
        let root = request.dir.root.clone();
        let handle = ShimHandle::start(&binary, &root, &launch, cgroup.clone()).await?;
        Ok(Box::new(ShimProcess {
            handle,
            cgroup,
            kill_grace: self.kill_grace,
            started: Instant::now(),
        }))
    }
}

/// A job's shim, seen from the worker: started by this worker (its child,
/// reaped here) or found again after a restart (waited for through a
/// pidfd); its job's pid; its attempt directory, where `exit.json` is.
#[derive(Debug)]
pub(crate) struct ShimHandle {
    child: Option<tokio::process::Child>,
    shim_pid: u32,
    /// The job's pid (its process group).
    pub(crate) pid: u32,
    root: PathBuf,
}

impl ShimHandle {
    /// Starts `binary shim ROOT` in a session of its own, gives it
    /// `launch` (JSON) on its stdin, and reads its handshake. Dropped
    /// before the handshake (a cancel, the spawn timeout), the shim and
    /// `cgroup` are ended.
    ///
    /// # Errors
    /// The shim cannot start, or says the job could not (its message).
    pub(crate) async fn start(
        binary: &Path,
        root: &Path,
        launch: &[u8],
        cgroup: Option<JobCgroup>,
    ) -> Result<ShimHandle, LaunchError> {
        let mut command = Command::new(binary);
        command
            .arg("shim")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match std::fs::File::create(root.join("shim.log")) {
                Ok(file) => Stdio::from(file),
                Err(_) => Stdio::null(),
            })
            // The shim outlives the worker: never killed with it.
            .kill_on_drop(false);
        // SAFETY: setsid is an async-signal-safe syscall.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| LaunchError(format!("cannot start the shim {}: {e}", binary.display())))?;
        let guard = Unconfirmed {
            shim_pid: child.id(),
            cgroup,
        };
        let mut stdin = child.stdin.take().expect("piped");
        let fed = async {
            tokio::io::AsyncWriteExt::write_all(&mut stdin, launch).await?;
            tokio::io::AsyncWriteExt::shutdown(&mut stdin).await
        };
        fed.await
            .map_err(|e| LaunchError(format!("cannot give the shim its launch: {e}")))?;
        drop(stdin);
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
            .await
            .map_err(|e| LaunchError(format!("the shim's handshake: {e}")))?;
        let handshake = match crate::shim::read_handshake(line.as_bytes()) {
            Ok(handshake) => handshake,
            Err(e) => {
                let ended = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                let log = std::fs::read_to_string(root.join("shim.log")).unwrap_or_default();
                return Err(LaunchError(format!(
                    "{e}; the shim {}; it said: {:?}",
                    match ended {
                        Ok(Ok(status)) => format!("ended {status}"),
                        _ => "did not end".to_owned(),
                    },
                    log.trim()
                )));
            }
        };
        match handshake {
            Handshake::Failed { message } => {
                let _ = child.wait().await;
                guard.disarm();
                Err(LaunchError(message))
            }
            Handshake::Started { pid, shim_pid } => {
                guard.disarm();
                Ok(ShimHandle {
                    child: Some(child),
                    shim_pid,
                    pid,
                    root: root.to_owned(),
                })
            }
        }
    }

    /// The shim of attempt directory `root` from before a restart: one that
    /// still runs (checked by its command line, not only its pid), or one
    /// that recorded its job's end.
    pub(crate) fn find(root: &Path) -> Option<ShimHandle> {
        if let Some(found) = ShimHandle::find_now(root) {
            return Some(found);
        }
        // A shim started just before the crash may not have written
        // `shim.pid` yet: while one of this attempt runs, wait for its
        // record (it exits instead if its launch never fully arrived).
        let deadline = std::time::Instant::now() + SHIM_RECORD_WAIT;
        while std::time::Instant::now() < deadline && any_shim_of(root) {
            std::thread::sleep(std::time::Duration::from_millis(10));
            if let Some(found) = ShimHandle::find_now(root) {
                return Some(found);
            }
        }
        ShimHandle::find_now(root)
    }

    fn find_now(root: &Path) -> Option<ShimHandle> {
        // Alive first, then the record: a shim that exits between the two
        // looks alive (its pidfd then says it is gone, and its record is
        // read after), never dead without a record.
        let pids = crate::shim::read_pids(root);
        let alive = pids.is_some_and(|p| is_shim_of(p.shim_pid, root));
        let exit = crate::shim::read_exit(root);
        let pid = match (&exit, pids) {
            (Some(exit), _) => exit.pid,
            (None, Some(pids)) if alive => pids.pid,
            _ => return None,
        };
        Some(ShimHandle {
            child: None,
            shim_pid: pids.map_or(0, |p| p.shim_pid),
            pid,
            root: root.to_owned(),
        })
    }

    /// Completes when the shim has exited; its own exit status when it was
    /// this worker's child (the job's status, should `exit.json` be
    /// missing).
    pub(crate) async fn exited(&mut self) -> Option<ExitStatus> {
        match &mut self.child {
            Some(child) => Some(exit_status(child.wait().await)),
            None => {
                if crate::shim::read_exit(&self.root).is_some() {
                    // Ended while no worker ran: only the shim's own last
                    // step (its exit) may be left; its record is final.
                    return None;
                }
                wait_for_exit(self.shim_pid).await;
                None
            }
        }
    }

    /// The job's end, once the shim exited with `shim_status`: its
    /// `exit.json`, else the shim's own status (a full disk), else unknown
    /// (code -1, logged). The run time is the record's, else since
    /// `started`.
    pub(crate) fn end(
        &self,
        shim_status: Option<ExitStatus>,
        started: Instant,
    ) -> (ExitStatus, u64) {
        let duration_ms = started.elapsed().as_millis() as u64;
        match (crate::shim::read_exit(&self.root), shim_status) {
            (Some(exit), _) => (exit.status, exit.duration_ms),
            (None, Some(status)) => {
                tracing::warn!(
                    pid = self.pid,
                    ?status,
                    "the job's end was not recorded by its shim; taken from the shim's exit status"
                );
                (status, duration_ms)
            }
            (None, None) => {
                tracing::error!(pid = self.pid, shim_pid = self.shim_pid, root = %self.root.display(), "the job's shim ended without recording the job's end");
                (ExitStatus::Code { code: -1 }, duration_ms)
            }
        }
    }
}

/// The blocking part of [`HostRunner::spawn_with_shim`]: the attempt's
/// directory, the program resolved, the cgroup made; the shim's launch.
fn prepare_shim(
    request: &ProcessRequest,
    user: Option<&JobUser>,
    cgroups: Option<&Cgroups>,
    (max_log_bytes, default_storage_bytes): (u64, u64),
    kill_grace: Duration,
) -> Result<(Option<JobCgroup>, crate::shim::Launch), LaunchError> {
    let work = make_work(request, user)?;
    let (program, _) = request
        .argv
        .split_first()
        .ok_or_else(|| LaunchError("process.command is empty".into()))?;
    let (resolved, path) = resolve(program, &work)?;
    let cgroup = cgroups
        .map(|c| c.create(&request.key))
        .transpose()
        .map_err(|e| LaunchError(format!("cannot make the job's cgroup: {e}")))?;
    let mut env = vec![
        ("PATH".to_owned(), path.to_string_lossy().into_owned()),
        ("HOME".to_owned(), work.to_string_lossy().into_owned()),
        ("HAIL_BATCH_ID".to_owned(), request.key.batch_id.to_string()),
        ("HAIL_JOB_ID".to_owned(), request.key.job_id.to_string()),
        ("HAIL_ATTEMPT_ID".to_owned(), request.key.attempt_id.clone()),
    ];
    env.extend(
        request
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone())),
    );
    let launch = crate::shim::Launch {
        program: resolved,
        argv: request.argv.clone(),
        env,
        cwd: work.clone(),
        log: request.dir.main_log(),
        max_log_bytes,
        cgroup: cgroup.clone(),
        user: user.map(|u| (u.uid, u.gid)),
        niceness: JOB_NICENESS,
        timeout_ms: request.timeout.map(|t| t.as_millis() as u64),
        kill_grace_ms: kill_grace.as_millis() as u64,
        storage_limit_bytes: request
            .storage_bytes
            .or((default_storage_bytes > 0).then_some(default_storage_bytes)),
        scratch: work.clone(),
        kill_argv: None,
    };
    Ok((cgroup, launch))
}

/// Whether `pid` is the shim of attempt directory `root` (its command
/// line is `... shim ROOT`: a pid reused by another process is not).
/// Longest wait at a restart for a running shim of an attempt to write
/// its `shim.pid` (it does within milliseconds of its start).
const SHIM_RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether any process is a shim of the attempt in `root` (a scan of
/// `/proc`).
fn any_shim_of(root: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| is_shim_of(pid, root))
}

fn is_shim_of(pid: u32, root: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"shim" && w[1] == root.as_os_str().as_encoded_bytes())
}

/// A shim whose handshake has not been read: ended if dropped.
struct Unconfirmed {
    shim_pid: Option<u32>,
    cgroup: Option<JobCgroup>,
}

impl Unconfirmed {
    fn disarm(mut self) {
        self.shim_pid = None;
        self.cgroup = None;
    }
}

impl Drop for Unconfirmed {
    fn drop(&mut self) {
        if let Some(pid) = self.shim_pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if let Some(cgroup) = self.cgroup.take() {
            std::thread::spawn(move || cgroup.kill_all());
        }
    }
}

/// A host job run by its shim, its end read from `exit.json`.
#[derive(Debug)]
pub(super) struct ShimProcess {
    pub(super) handle: ShimHandle,
    pub(super) cgroup: Option<JobCgroup>,
    pub(super) kill_grace: Duration,
    pub(super) started: Instant,
}

#[async_trait]
impl Process for ShimProcess {
    fn pid(&self) -> u32 {
        self.handle.pid
    }

    /// Waits for the shim to record the job's end; a kill is SIGTERM to
    /// the job's group and cgroup, SIGKILL after the grace. The timeout is
    /// the shim's (given at launch).
    async fn wait(
        mut self: Box<Self>,
        _timeout: Option<Duration>,
        kill: CancellationToken,
    ) -> (ExitStatus, u64) {
        let pid = self.handle.pid;
        let cgroup = self.cgroup.take();
        let shim_status = {
            let exited = self.handle.exited();
            tokio::pin!(exited);
            tokio::select! {
                status = &mut exited => status,
                () = kill.cancelled() => {
                    crate::shim::end(pid, cgroup.as_ref(), libc::SIGTERM);
                    match tokio::time::timeout(self.kill_grace, &mut exited).await {
                        Ok(status) => status,
                        Err(_) => {
                            crate::shim::end(pid, cgroup.as_ref(), libc::SIGKILL);
                            exited.await
                        }
                    }
                }
            }
        };
        // The shim ended the job's group when the job ended; its pid may
        // be another process's by now, so no signal goes to it from here.
        // The cgroup is the job's own: what is left in it goes.
        if let Some(cgroup) = cgroup {
            let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
        }
        self.handle.end(shim_status, self.started)
    }
}

/// Completes when process `pid` (not this process's child) has exited:
/// through a pidfd; at once if it is gone already.
async fn wait_for_exit(pid: u32) {
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the fd was just returned by pidfd_open and is owned here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd is moved into the AsyncFd, open and unchanged
    // for its life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(_) => {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
