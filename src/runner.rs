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
//!
//! This file is long (about 750 lines) because the `Runner` and `Process`
//! contract, the attempt directory's layout and the host runner that
//! implements them are read together; the shim's side is in
//! `runner/shimmed.rs`, cgroups in `cgroup.rs`.
//!
//! Through a shim (`runner/shimmed.rs`) the process outlives the worker and
//! is re-attached after a restart. This file is long (about 680 lines, 40
//! of them tests) because the contract the worker relies on (spawn, wait,
//! clean_up, reattach) and the host runner's own parts (directory, job
//! user, cgroup, spawn between fork and exec) are read together.

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
use crate::wire::EnvVar;

mod shimmed;

pub(crate) use shimmed::ShimHandle;
use shimmed::ShimProcess;

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

    /// `stopped_by_worker`: written by a graceful stop just before it ends
    /// the attempt's process. A restarted worker finding it does not take
    /// the end the stop gave the process (a shim's `exit.json` of 137 or
    /// 143) as the job's own: the job ends `worker_restarted`, as every
    /// job a stop abandons.
    pub fn stopped_mark(&self) -> PathBuf {
        self.root.join("stopped_by_worker")
    }

    /// The log of one of Hail's tasks (`input`, `main`, `output`):
    /// `main.log` is the process's output; `input.log` and `output.log`
    /// say what the worker's transfers did.
    pub fn task_log(&self, task: &str) -> PathBuf {
        self.root.join(format!("{task}.log"))
    }

    /// The task's resource-usage file, in Hail's binary format
    /// ([`crate::resource_usage`]).
    pub fn task_resource_usage(&self, task: &str) -> PathBuf {
        self.root.join(format!("{task}.resource_usage"))
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
    /// The spec's `network` (`None`: Hail's default, public). Only
    /// containers with a network of their own use it.
    pub network: Option<crate::network::NetworkKind>,
    /// The spec's `port`: the job's TCP port to publish on a host port.
    pub port: Option<u16>,
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

    /// Called at a graceful exit once no job process is left: removes what
    /// the runner keeps for jobs to come (a container runner's pooled
    /// network namespaces and rules). Blocking. The default does nothing.
    fn stopped(&self) {}

    /// Bytes (up, down) the job of attempt `key` sent and received so
    /// far, when its runner counts them (a network of its own); `None`
    /// (the default) else.
    fn network_bytes(&self, key: &JobKey) -> Option<(u64, u64)> {
        let _ = key;
        None
    }

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

    /// What the cgroup of attempt `key`'s process says it uses now (CPU
    /// time, memory), for its resource-usage file; `None` when its
    /// processes have no cgroup of their own (the default). Blocking (a
    /// few small file reads).
    fn usage(&self, key: &JobKey) -> Option<crate::cgroup::CgroupUsage> {
        let _ = key;
        None
    }
}

/// A started process.
#[async_trait]
pub trait Process: Send + std::fmt::Debug {
    /// Its process id, as journaled in `process_started` (for a host
    /// process also its process group id).
    fn pid(&self) -> u32;

    /// The job's own network, journaled in `process_started`: a container
    /// with a network namespace of its own; `None` (the default) else.
    fn network(&self) -> Option<batch_worker_model::JobAddress> {
        None
    }

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

/// Makes the attempt's working directory; with a job user, the directory
/// (and its staged inputs) become that user's, and nothing else of the
/// worker's does. Returns its path.
///
/// # Errors
/// It cannot be made or given.
fn make_work(request: &ProcessRequest, user: Option<&JobUser>) -> Result<PathBuf, LaunchError> {
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
    Ok(work)
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

    fn usage(&self, key: &JobKey) -> Option<crate::cgroup::CgroupUsage> {
        Some(self.cgroups.as_ref()?.existing(key)?.usage())
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
    let work = make_work(request, user)?;
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
