//! The process runner: runs a job's `process.command`.
//!
//! The worker starts processes through the [`Runner`] trait and waits
//! for them through [`Process`]; [`HostRunner`] is the real implementation
//! (a host process), and tests plug in a simulated one (exit code, run
//! time, crash) next to it.
//!
//! Each attempt gets a directory `{data_dir}/jobs/{batch_id}/{job_id}/{attempt_id}/`
//! holding `work/` (the process's working directory and `HOME`) and
//! `main.log` (its stdout and stderr). The process leads its own process
//! group, so ending it (timeout, cancel) ends everything it started:
//! SIGTERM to the group, then SIGKILL after the grace period.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_worker_model::{ExitStatus, JobKey};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::cgroup::{Cgroups, JobCgroup};
use crate::shim::Handshake;
use crate::wire::EnvVar;

/// The niceness of job processes (the worker's own is left as it is).
pub const JOB_NICENESS: i32 = 10;

/// Longest wait for a process to start (spawn returns once it has exec'd).
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);

/// `PATH` for jobs when the worker has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Where an attempt's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptDir {
    /// `{data_dir}/jobs/{batch_id}/{job_id}/{attempt_id}`.
    pub root: PathBuf,
}

impl AttemptDir {
    /// The directory of attempt `key` under `data_dir`. The key's parts are
    /// validated ids (digits, ASCII alphanumerics), so the path stays inside
    /// `data_dir`.
    pub fn new(data_dir: &Path, key: &JobKey) -> AttemptDir {
        AttemptDir {
            root: data_dir
                .join("jobs")
                .join(key.batch_id.to_string())
                .join(key.job_id.to_string())
                .join(&key.attempt_id),
        }
    }

    /// The process's working directory.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The log of the `main` container: stdout and stderr, interleaved.
    pub fn main_log(&self) -> PathBuf {
        self.root.join("main.log")
    }

    /// The spec the process was started from (`spec.json`, without its
    /// secrets): what a restarted worker re-attaching to it goes on with.
    pub fn spec_record(&self) -> PathBuf {
        self.root.join("spec.json")
    }

    /// Makes the working directory (and the attempt's) and an empty
    /// `main.log`, keeping what is already there. Blocking; the worker
    /// calls it before [`Runner::spawn`].
    ///
    /// # Errors
    /// A directory or the log cannot be created.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.work())?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.main_log())
            .map(drop)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessRequest {
    /// The attempt.
    pub key: JobKey,
    /// argv; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Environment, applied in order after the worker's base variables.
    pub env: Vec<EnvVar>,
    /// The attempt's directory.
    pub dir: AttemptDir,
    /// The pulled image to run in (runc executor); host processes ignore it.
    pub image: Option<std::sync::Arc<crate::image::PulledImage>>,
    /// CPU limit, in mcpu (`resources.cores_mcpu`; containers only).
    pub cores_mcpu: u64,
    /// Memory limit, in bytes (`resources.memory_bytes`, 0: none;
    /// containers only).
    pub memory_bytes: u64,
    /// The request's `secrets`, mounted read-only in a container for the
    /// job's life; host processes get none.
    pub secrets: Vec<crate::wire::SecretMount>,
    /// The spec's timeout. A runner that hands its process to a shim gives
    /// it the timeout (the shim ends the job on time even while no worker
    /// runs); others get it in [`Process::wait`].
    pub timeout: Option<Duration>,
    /// The spec's storage bound (`resources.storage_gib`), in bytes; `None`:
    /// the runner's default.
    pub storage_bytes: Option<u64>,
}

/// A process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

/// Starts job processes.
///
/// Contract, which the worker relies on: `spawn` resolves once the
/// process runs (or with the reason it cannot), and may be abandoned
/// (dropped) at any point, which must leave no process behind;
/// [`Process::wait`] ends the process (and everything it started) before
/// it returns, whichever way it ended.
#[async_trait]
pub trait Runner: Send + Sync + std::fmt::Debug {
    /// Makes the attempt's directory and starts its process.
    ///
    /// # Errors
    /// [`LaunchError`] saying what could not be started.
    async fn spawn(&self, request: &ProcessRequest) -> Result<Box<dyn Process>, LaunchError>;

    /// Time between asking a process to end and killing it; shutdown
    /// waits this long (plus a margin) for processes to end.
    fn kill_grace(&self) -> Duration;

    /// Removes what a process of attempt `key` may have left when the
    /// worker stopped without ending it (a crash): for containers, the
    /// container (its processes), its mounts, bundle and secret files.
    /// Called at start for every attempt the journal shows live. Blocking;
    /// idempotent. Returns whether this runner ends such leftovers (true
    /// for containers); host processes are not ended (after a reboot their
    /// pid may be another process's), so the default does nothing and
    /// returns false.
    fn clean_up(&self, key: &JobKey, dir: &AttemptDir) -> bool {
        let _ = (key, dir);
        false
    }

    /// Whether this runner's processes outlive the worker, so that
    /// [`Runner::reattach`] can find them (the worker then keeps each
    /// job's spec beside it, `spec.json`). Default false.
    fn reattaches(&self) -> bool {
        false
    }

    /// Called at start for an attempt the journal shows starting,
    /// executing or being cancelled: its process and pid, re-attached
    /// (still running under its shim, or ended while no worker ran, its
    /// exit on record), or `None` when it cannot be (then
    /// [`Runner::clean_up`] ends what is left). Blocking.
    fn reattach(&self, key: &JobKey, dir: &AttemptDir) -> Option<(u32, Box<dyn Process>)> {
        let _ = (key, dir);
        None
    }
}

/// A started process.
#[async_trait]
pub trait Process: Send + std::fmt::Debug {
    /// Its process id, as journaled in `process_started` (for a host
    /// process also its process group id).
    fn pid(&self) -> u32;

    /// Waits for the process to end: by itself, by running past `timeout`
    /// (then [`ExitStatus::TimedOut`]), or by `kill` being cancelled (then
    /// the status the ending produced). Returns the status and the run
    /// time in ms.
    async fn wait(
        self: Box<Self>,
        timeout: Option<Duration>,
        kill: CancellationToken,
    ) -> (ExitStatus, u64);
}

/// Runs host processes.
#[derive(Debug, Clone)]
pub struct HostRunner {
    /// Time between SIGTERM and SIGKILL when ending a process (default 5 s).
    pub kill_grace: Duration,
    /// The unprivileged user jobs run as (their working directory is given
    /// to it); `None`: as the worker's own user (default).
    pub job_user: Option<JobUser>,
    /// Where each job's cgroup is made (every process of the job stays in
    /// it and is ended with it); `None`: process groups only (default).
    pub cgroups: Option<Cgroups>,
    /// The shim each job's process is handed to (see [`crate::shim`]), so
    /// that jobs outlive a worker restart; `None`: the worker's own child,
    /// ended with the worker (default: an embedded worker has no binary to
    /// re-exec).
    pub shim: Option<ShimConfig>,
}

/// How jobs are handed to their shims.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The `batch-worker` binary (`shim ATTEMPT_DIR` is its subcommand).
    pub binary: PathBuf,
    /// Most bytes a job's `main.log` keeps: its first and last halves,
    /// with a line saying what was cut; 0: no cap.
    pub max_log_bytes: u64,
    /// The storage bound of a job whose spec gives none
    /// (`resources.storage_gib` absent or 0), in bytes; 0: unbounded.
    pub default_storage_bytes: u64,
}

/// Default storage bound of a job whose spec gives none (10 GiB).
pub const DEFAULT_JOB_STORAGE_BYTES: u64 = 10 << 30;

/// Default cap of a job's `main.log` (8 MiB: 4 MiB from its start, 4 MiB
/// from its end).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

impl Default for HostRunner {
    fn default() -> Self {
        HostRunner {
            kill_grace: Duration::from_secs(5),
            job_user: None,
            cgroups: None,
            shim: None,
        }
    }
}

/// A user host jobs run as: no supplementary groups, its own uid and
/// primary gid, so that it cannot read the worker's memory (`/proc/PID/mem`
/// of a process of another user, and not dumpable) nor another job's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    /// Its name, for messages.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// Why `--job-user` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--job-user {name}: {reason}")]
pub struct JobUserError {
    /// The name given.
    pub name: String,
    /// What is wrong, and what to do.
    pub reason: String,
}

impl JobUser {
    /// The user called `name` (from the password database), if jobs must
    /// switch to it: `Ok(None)` when `name` is empty, or when the worker is
    /// not root (it cannot switch; jobs run as the worker's user), or when
    /// `name` is the worker's own user.
    ///
    /// # Errors
    /// No such user; or a uid of 0 (root is what the switch avoids).
    pub fn resolve(name: &str) -> Result<Option<JobUser>, JobUserError> {
        let fail = |reason: String| JobUserError {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| fail(format!("the user database cannot be read ({e})")))?
            .ok_or_else(|| fail("no such user; name one that exists (`nobody` is usual) or pass --job-user '' to run jobs as the worker's user".into()))?;
        if user.uid.is_root() {
            if name == "root" {
                return Ok(None);
            }
            return Err(fail("its uid is 0; name an unprivileged user".into()));
        }
        Ok(Some(JobUser {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Checks that this user can reach `dir` (every directory above it lets
    /// others pass: `o+x`), so that jobs can enter their directories.
    ///
    /// # Errors
    /// The first directory it cannot pass, and the fix.
    pub fn check_reaches(&self, dir: &Path) -> Result<(), JobUserError> {
        use std::os::unix::fs::MetadataExt;
        for ancestor in dir.ancestors() {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let passes = meta.mode() & 0o001 != 0
                || (meta.uid() == self.uid && meta.mode() & 0o100 != 0)
                || (meta.gid() == self.gid && meta.mode() & 0o010 != 0);
            if !passes {
                return Err(JobUserError {
                    name: self.name.clone(),
                    reason: format!(
                        "jobs cannot reach their directories under {}: {} is mode {:o}; run `chmod o+x {}`, or pass --job-user '' to run jobs as the worker's user",
                        dir.display(),
                        ancestor.display(),
                        meta.mode() & 0o7777,
                        ancestor.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Gives `dir` and everything under it (not following links) to `user`.
fn give_to(dir: &Path, user: &JobUser) -> std::io::Result<()> {
    use std::os::unix::fs::lchown;
    lchown(dir, Some(user.uid), Some(user.gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            give_to(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// A spawned process.
#[derive(Debug)]
pub struct RunningProcess {
    child: Child,
    pid: u32,
    started: Instant,
    kill_grace: Duration,
    /// The job's cgroup, ended and removed with the job.
    cgroup: Option<JobCgroup>,
}

#[async_trait]
impl Runner for HostRunner {
    /// Makes the attempt's directory and log, and spawns the process.
    ///
    /// The environment is cleared, then `PATH` (the worker's), `HOME` (the
    /// working directory), `HAIL_BATCH_ID`, `HAIL_JOB_ID`, `HAIL_ATTEMPT_ID`,
    /// then `request.env` in order.
    ///
    /// # Errors
    /// [`LaunchError`] naming the program or path that failed.
    async fn spawn(&self, request: &ProcessRequest) -> Result<Box<dyn Process>, LaunchError> {
        if let Some(shim) = &self.shim {
            return self.spawn_with_shim(shim, request).await;
        }
        // Creating files and spawning block (ext4 inode allocation; the
        // spawning thread waits until the child has exec'd): keep them off
        // the threads that answer create calls.
        let request = request.clone();
        let user = self.job_user.clone();
        let cgroups = self.cgroups.clone();
        let (child, pid, cgroup) = tokio::task::spawn_blocking(move || {
            spawn_now(&request, user.as_ref(), cgroups.as_ref())
        })
        .await
        .map_err(|e| LaunchError(format!("the spawning thread failed: {e}")))??;
        Ok(Box::new(RunningProcess {
            child,
            pid,
            started: Instant::now(),
            kill_grace: self.kill_grace,
            cgroup,
        }))
    }

    fn reattaches(&self) -> bool {
        self.shim.is_some()
    }

    /// A job from before a restart that runs under its shim, or whose shim
    /// recorded its exit: re-attached.
    fn reattach(&self, key: &JobKey, dir: &AttemptDir) -> Option<(u32, Box<dyn Process>)> {
        self.shim.as_ref()?;
        let handle = ShimHandle::find(&dir.root)?;
        let pid = handle.pid;
        tracing::info!(%key, pid, "job re-attached");
        Some((
            pid,
            Box::new(ShimProcess {
                handle,
                cgroup: self.cgroups.as_ref().and_then(|c| c.existing(key)),
                kill_grace: self.kill_grace,
                started: Instant::now(),
            }),
        ))
    }

    /// A job from before a restart: its cgroup (if any) is ended and
    /// removed, every process of it, whatever its pid now names.
    fn clean_up(&self, key: &JobKey, _dir: &AttemptDir) -> bool {
        match self.cgroups.as_ref().and_then(|c| c.existing(key)) {
            Some(cgroup) => {
                let pids = cgroup.pids();
                let gone = cgroup.kill_all();
                tracing::warn!(%key, ?pids, gone, "a job's processes from before the restart ended");
                true
            }
            None => false,
        }
    }

    fn kill_grace(&self) -> Duration {
        self.kill_grace
    }
}

/// The blocking part of [`HostRunner::spawn`].
fn spawn_now(
    request: &ProcessRequest,
    user: Option<&JobUser>,
    cgroups: Option<&Cgroups>,
) -> Result<(Child, u32, Option<JobCgroup>), LaunchError> {
    let work = request.dir.work();
    std::fs::create_dir_all(&work)
        .map_err(|e| LaunchError(format!("cannot create {}: {e}", work.display())))?;
    if let Some(user) = user {
        // The job's working directory (and its staged inputs) become the
        // job user's; nothing else of the worker's is.
        give_to(&work, user).map_err(|e| {
            LaunchError(format!(
                "cannot give {} to the job user {}: {e}",
                work.display(),
                user.name
            ))
        })?;
    }
    let log_path = request.dir.main_log();
    let log = std::fs::File::create(&log_path)
        .map_err(|e| LaunchError(format!("cannot create {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| LaunchError(format!("cannot open {}: {e}", log_path.display())))?;
    let (program, args) = request
        .argv
        .split_first()
        .ok_or_else(|| LaunchError("process.command is empty".into()))?;
    // Resolve argv[0] here: std spawns with posix_spawn (vfork-like) only
    // for a program given as a path, and otherwise forks, which stalls every
    // worker thread on copy-on-write faults.
    let (resolved, path) = resolve(program, &work)?;
    let mut command = Command::new(&resolved);
    command
        .arg0(program)
        .args(args)
        .current_dir(&work)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", &work)
        .env("HAIL_BATCH_ID", request.key.batch_id.to_string())
        .env("HAIL_JOB_ID", request.key.job_id.to_string())
        .env("HAIL_ATTEMPT_ID", &request.key.attempt_id)
        .envs(request.env.iter().map(|v| (&v.name, &v.value)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(true);
    let cgroup = cgroups
        .map(|c| c.create(&request.key))
        .transpose()
        .map_err(|e| LaunchError(format!("cannot make the job's cgroup: {e}")))?;
    let procs = cgroup
        .as_ref()
        .map(JobCgroup::procs_files)
        .unwrap_or_default();
    let drop_to = user.map(|u| (u.uid, u.gid));
    if !procs.is_empty() || drop_to.is_some() {
        // In the child, before exec: join the cgroup while still root,
        // then drop to the job user (in this order: joining needs root).
        // SAFETY: the closure makes only async-signal-safe syscalls on
        // data made before the fork (see cgroup::join_in_child).
        unsafe {
            command.pre_exec(move || {
                crate::cgroup::join_in_child(&procs)?;
                if let Some((uid, gid)) = drop_to {
                    crate::cgroup::drop_to_in_child(uid, gid)?;
                }
                Ok(())
            });
        }
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            if let Some(cgroup) = &cgroup {
                cgroup.kill_all();
            }
            return Err(LaunchError(format!("cannot run {program:?}: {e}")));
        }
    };
    let pid = child
        .id()
        .ok_or_else(|| LaunchError(format!("{program:?} exited before it could be watched")))?;
    // Jobs yield the CPU to the worker: a machine busy running jobs must not
    // delay the create answers the driver's scheduling loop waits for.
    // (The host-process stand-in for a container's CPU shares.)
    // SAFETY: setpriority takes plain integers and touches no memory.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, JOB_NICENESS) };
    Ok((child, pid, cgroup))
}

impl HostRunner {
    /// Spawns `request`'s job under a shim: starts `batch-worker shim
    /// ATTEMPT_DIR` in a session of its own, gives it the job's launch on
    /// its stdin, and reads the job's pid from its handshake.
    async fn spawn_with_shim(
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

/// `program` looked up in the worker's `PATH` (relative to `work` when it
/// is a relative path): its path, and the `PATH` the job gets.
///
/// # Errors
/// No executable file of that name.
fn resolve(program: &str, work: &Path) -> Result<(PathBuf, std::ffi::OsString), LaunchError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let resolved = which::which_in(program, Some(&path), work).map_err(|_| {
        let place = if program.contains('/') {
            ""
        } else {
            " in PATH"
        };
        LaunchError(format!(
            "cannot run {program:?}: no executable file of that name{place}"
        ))
    })?;
    Ok((resolved, path))
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
    let work = request.dir.work();
    std::fs::create_dir_all(&work)
        .map_err(|e| LaunchError(format!("cannot create {}: {e}", work.display())))?;
    if let Some(user) = user {
        give_to(&work, user).map_err(|e| {
            LaunchError(format!(
                "cannot give {} to the job user {}: {e}",
                work.display(),
                user.name
            ))
        })?;
    }
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
struct ShimProcess {
    handle: ShimHandle,
    cgroup: Option<JobCgroup>,
    kill_grace: Duration,
    started: Instant,
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

#[async_trait]
impl Process for RunningProcess {
    /// The host process id (also its process group id).
    fn pid(&self) -> u32 {
        self.pid
    }

    /// See [`Process::wait`]; a kill is SIGTERM to the process group, then
    /// SIGKILL after the grace period. Either way the whole process group
    /// is ended before returning.
    async fn wait(
        mut self: Box<Self>,
        timeout: Option<Duration>,
        kill: CancellationToken,
    ) -> (ExitStatus, u64) {
        let timer = run_out(timeout);
        let status = tokio::select! {
            status = self.child.wait() => exit_status(status),
            () = timer => {
                self.end_group().await;
                ExitStatus::TimedOut { timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64) }
            }
            () = kill.cancelled() => self.end_group().await,
        };
        // Leave nothing of the job behind, even if the leader exited alone:
        // its group, and with a cgroup every process that left the group.
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        if let Some(cgroup) = self.cgroup.take() {
            let usage = cgroup.usage();
            let pid = self.pid;
            let _ = tokio::task::spawn_blocking(move || {
                let left = cgroup.pids();
                if !left.is_empty() {
                    tracing::info!(
                        pid,
                        ?left,
                        "processes that left the job's process group ended with its cgroup"
                    );
                }
                cgroup.kill_all()
            })
            .await;
            tracing::debug!(
                pid,
                cpu_usec = usage.cpu_usec,
                memory_peak_bytes = usage.memory_peak_bytes,
                "job cgroup usage"
            );
        }
        (status, self.started.elapsed().as_millis() as u64)
    }
}

impl RunningProcess {
    /// SIGTERM to the group (and every process of the cgroup), SIGKILL
    /// after the grace period.
    async fn end_group(&mut self) -> ExitStatus {
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if let Some(cgroup) = &self.cgroup {
            for pid in cgroup.pids() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        match tokio::time::timeout(self.kill_grace, self.child.wait()).await {
            Ok(status) => exit_status(status),
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
                exit_status(self.child.wait().await)
            }
        }
    }
}

/// Resolves once `timeout` has passed; never without one. What a
/// [`Process::wait`] races the process against.
pub async fn run_out(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// A process's wait status as the model's [`ExitStatus`]: its code, or the
/// signal that ended it; code -1 when it is unknown (`waitpid` failed).
pub(crate) fn exit_status(status: std::io::Result<std::process::ExitStatus>) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitStatus::Code { code },
            (None, Some(signal)) => ExitStatus::Signal { signal },
            (None, None) => ExitStatus::Code { code: -1 },
        },
        // waitpid failed: the process is gone and its status unknown.
        Err(_) => ExitStatus::Code { code: -1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> JobKey {
        JobKey {
            batch_id: 7,
            job_id: 3,
            attempt_id: "a1B2".into(),
        }
    }

    #[test]
    fn attempt_dir_create_makes_work_and_an_empty_log_and_keeps_what_is_there() {
        let data = tempfile::tempdir().unwrap();
        let dir = AttemptDir::new(data.path(), &key());
        dir.create().unwrap();
        assert!(dir.work().is_dir());
        assert_eq!(std::fs::read(dir.main_log()).unwrap(), b"");
        std::fs::write(dir.main_log(), b"line\n").unwrap();
        std::fs::write(dir.work().join("input"), b"x").unwrap();
        dir.create().unwrap();
        assert_eq!(std::fs::read(dir.main_log()).unwrap(), b"line\n");
        assert_eq!(std::fs::read(dir.work().join("input")).unwrap(), b"x");
        assert!(dir
            .main_log()
            .starts_with(data.path().join("jobs/7/3/a1B2")));
    }
}
