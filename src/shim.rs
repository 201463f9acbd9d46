//! The per-job shim: a small process (`batch-worker shim ATTEMPT_DIR`, a
//! re-exec of the worker's own binary) that owns one host job's process,
//! as containerd's shims and Nomad's executor do. It outlives the worker:
//! a worker that crashes or is upgraded leaves its jobs running, and the
//! next one re-attaches to them (see [`crate::runner::HostRunner`]).
//!
//! The shim, in its own session:
//! 1. reads its [`Launch`] (one JSON document) from stdin: nothing is
//!    written to disk before the job starts, so a full disk cannot stop
//!    it, and the environment is never on disk;
//! 2. starts the job (joining its cgroup, then dropping to the job user,
//!    between fork and exec), its output into a pipe;
//! 3. tells the worker the job's pid (one JSON line on stdout, the
//!    handshake), and writes its own pid to `shim.pid`;
//! 4. copies the job's output into `main.log` with [`LogCap`] (the first
//!    and last parts kept, what was cut said);
//! 5. ends the job at its timeout (SIGTERM to its process group and
//!    cgroup, SIGKILL after the grace);
//! 6. when the job's process ends: ends what is left of it (its group, its
//!    cgroup), and writes `exit.json` ([`ShimExit`]: exit code or signal,
//!    run time, end time, log sizes), durably, into room it reserved at
//!    its start (so a disk filled meanwhile does not lose it), then exits
//!    with the job's own status (its code, or the signal it died of): what
//!    a worker still waiting on it reads if `exit.json` could not be
//!    written at all.
//!
//! The shim ignores SIGINT, SIGHUP and SIGTERM: only the job's end ends it.
//!
//! This file is long (about 740 lines, 60 of them tests) because the shim
//! is one program read top to bottom: its launch, the job's start, the
//! log cap, the timeout and storage watch, and the record of the end.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use batch_worker_model::ExitStatus;
use serde::{Deserialize, Serialize};

use crate::cgroup::JobCgroup;
use crate::runner::exit_status;

/// Writes a line to the shim's stderr (its `shim.log`), ignoring failure:
/// `eprintln!` panics when stderr cannot be written, which on a full disk
/// it cannot.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// What the worker tells the shim to run (on the shim's stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// The program, resolved to a path.
    pub program: PathBuf,
    /// argv, `argv[0]` included.
    pub argv: Vec<String>,
    /// The whole environment, in order.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// Where the job's output goes (`main.log`).
    pub log: PathBuf,
    /// Most bytes `main.log` keeps (see [`LogCap`]); 0: no cap.
    pub max_log_bytes: u64,
    /// The job's cgroup, joined before exec.
    pub cgroup: Option<JobCgroup>,
    /// `(uid, gid)` the job runs as; `None`: the shim's.
    pub user: Option<(u32, u32)>,
    /// The job's niceness.
    pub niceness: i32,
    /// The spec's timeout, in ms.
    pub timeout_ms: Option<u64>,
    /// SIGTERM → SIGKILL delay at the timeout, in ms.
    pub kill_grace_ms: u64,
    /// The job's storage bound: when `scratch` takes more, in bytes, the
    /// job is ended ([`ExitStatus::StorageExceeded`]).
    pub storage_limit_bytes: Option<u64>,
    /// The directory the storage bound applies to (the job's working
    /// directory; a container's writable layer).
    pub scratch: PathBuf,
    /// How the job is ended when it is not a plain process group: this
    /// command with the signal's name (`TERM`, `KILL`) appended (a
    /// container: `runc kill --all ID`); `None`: signals to the job's
    /// process group and cgroup.
    pub kill_argv: Option<Vec<String>>,
}

/// How the job ended (`exit.json`), written by the shim once, durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimExit {
    /// The job's pid.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// From its start to its end, in ms.
    pub duration_ms: u64,
    /// When it ended, ms since the Unix epoch.
    pub end_time_ms: i64,
    /// Bytes the job wrote to its output.
    pub log_bytes: u64,
    /// Bytes of it cut from `main.log`.
    pub log_cut_bytes: u64,
}

/// The shim's first line on stdout: the job's pid, or why it did not start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handshake {
    /// The job started.
    Started {
        /// The job's pid.
        pid: u32,
        /// The shim's own pid.
        shim_pid: u32,
    },
    /// The job could not be started.
    Failed {
        /// Why, naming the program.
        message: String,
    },
}

/// What `shim.pid` holds: the shim's pid and its job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimPids {
    /// The shim's pid.
    pub shim_pid: u32,
    /// The job's pid (its process group).
    pub pid: u32,
}

/// Reads the `shim.pid` of an attempt directory.
pub fn read_pids(root: &Path) -> Option<ShimPids> {
    serde_json::from_slice(&std::fs::read(shim_pid_path(root)).ok()?).ok()
}

/// `exit.json` of an attempt directory.
pub fn exit_path(root: &Path) -> PathBuf {
    root.join("exit.json")
}

/// `shim.pid` of an attempt directory.
pub fn shim_pid_path(root: &Path) -> PathBuf {
    root.join("shim.pid")
}

/// Reads the `exit.json` of an attempt directory, if the shim wrote it.
pub fn read_exit(root: &Path) -> Option<ShimExit> {
    let bytes = std::fs::read(exit_path(root)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Bytes reserved for `exit.json` when the shim starts.
const EXIT_RESERVE_BYTES: i64 = 4096;

/// The shim's `main`: runs the job of attempt directory `root` to its end.
/// Returns the process's exit code: the job's (see the module doc), or 1
/// if the shim itself failed before the job started.
pub fn main(root: &Path) -> i32 {
    match run(root) {
        Ok(Some(status)) => match status {
            ExitStatus::Code { code } => code & 0xff,
            ExitStatus::Signal { signal } => {
                // Die of the same signal (the shim ignores some: default
                // them first), as a shell does.
                // SAFETY: plain syscalls on our own process.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    libc::kill(libc::getpid(), signal);
                }
                128 + signal
            }
            _ => 128 + libc::SIGKILL,
        },
        Ok(None) => 0,
        Err(e) => {
            say!("batch-worker shim {}: {e}", root.display());
            1
        }
    }
}

/// Runs the job; `Some` its status once it ended, `None` if it did not
/// start (the handshake said why).
fn run(root: &Path) -> std::io::Result<Option<ExitStatus>> {
    ignore_signals();
    let mut input = Vec::new();
    std::io::stdin().lock().read_to_end(&mut input)?;
    let launch: Launch = serde_json::from_slice(&input)
        .map_err(|e| std::io::Error::other(format!("the launch on stdin: {e}")))?;
    input.fill(0);
    // Room for the record of the job's end, taken now.
    let exit_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(exit_path(root));
    if let Ok(file) = &exit_file {
        let _ = nix::fcntl::fallocate(
            file,
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            EXIT_RESERVE_BYTES,
        );
    }
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let log = File::create(&launch.log).or_else(|e| {
        say!(
            "batch-worker shim: {}: {e}; the job's output is dropped",
            launch.log.display()
        );
        File::options().write(true).open("/dev/null")
    })?;
    let started = Instant::now();
    let child = match spawn(&launch, write_end) {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot run {:?}: {e}", launch.argv[0]);
            handshake(&Handshake::Failed { message })?;
            let _ = std::fs::remove_file(exit_path(root));
            return Ok(None);
        }
    };
    let pid = child.id();
    // SAFETY: setpriority takes plain integers.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, launch.niceness) };
    // Without it a restarted worker cannot re-attach (it ends the job).
    let pids = ShimPids {
        shim_pid: std::process::id(),
        pid,
    };
    let pids = serde_json::to_vec(&pids).map_err(std::io::Error::other)?;
    if let Err(e) = write_atomically(&shim_pid_path(root), &pids) {
        say!("batch-worker shim: shim.pid: {e}");
    }
    // The worker may be gone already (killed between the launch and the
    // handshake): the job runs all the same, and the next worker
    // re-attaches through shim.pid.
    if let Err(e) = handshake(&Handshake::Started {
        pid,
        shim_pid: std::process::id(),
    }) {
        say!("batch-worker shim: the handshake: {e}; going on without the worker");
    }
    let cap = Arc::new(Mutex::new(Some(
        LogCap::new(log, launch.max_log_bytes).beside(&launch.log),
    )));
    let (pumped, pump_done) = mpsc::channel();
    {
        let cap = cap.clone();
        std::thread::spawn(move || {
            pump(read_end, &cap);
            let _ = pumped.send(());
        });
    }
    let (watching, exceeded) = watch_storage(&launch, pid);
    let mut status = wait(child, &launch);
    let duration_ms = started.elapsed().as_millis() as u64;
    drop(watching);
    if let (Some(used_bytes), Some(limit_bytes)) = (
        *exceeded.lock().unwrap_or_else(|p| p.into_inner()),
        launch.storage_limit_bytes,
    ) {
        status = ExitStatus::StorageExceeded {
            limit_bytes,
            used_bytes,
        };
    }
    // Nothing of the job outlives it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    if let Some(cgroup) = &launch.cgroup {
        cgroup.kill_all();
    }
    // The last output; a process that escaped without a cgroup may hold
    // the pipe open: not waited for past a second.
    let _ = pump_done.recv_timeout(Duration::from_secs(1));
    let finished = cap.lock().unwrap_or_else(|p| p.into_inner()).take();
    let (log_bytes, log_cut_bytes) = match finished {
        Some(cap) => cap.finish()?,
        None => (0, 0),
    };
    let exit = ShimExit {
        pid,
        status,
        duration_ms,
        end_time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        log_bytes,
        log_cut_bytes,
    };
    let bytes = serde_json::to_vec(&exit).map_err(std::io::Error::other)?;
    // Into the room reserved at the start; else a fresh file.
    let written = match &exit_file {
        Ok(file) => file
            .write_all_at(&bytes, 0)
            .and_then(|()| file.set_len(bytes.len() as u64))
            .and_then(|()| file.sync_all()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
    .or_else(|_| write_atomically(&exit_path(root), &bytes));
    if let Err(e) = written {
        say!("batch-worker shim: exit.json: {e}; the exit status carries the job's end");
    }
    Ok(Some(exit.status))
}

/// Shortest pause between two measures of a job's files.
const STORAGE_CHECK_MIN: Duration = Duration::from_millis(250);

/// Watches the job's working directory against its storage bound, on a
/// thread of its own, until the returned sender is dropped. Over the bound
/// it ends the job (SIGKILL to its group and cgroup) and records what the
/// files took. The measure is a walk (allocated blocks, one file system),
/// paused for at least ten times its own length, so a job with many files
/// costs the shim at most a tenth of a core; a job that writes faster than
/// that can overshoot its bound by what it writes in one pause.
fn watch_storage(launch: &Launch, pid: u32) -> (mpsc::Sender<()>, Arc<Mutex<Option<u64>>>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let exceeded = Arc::new(Mutex::new(None));
    let Some(limit) = launch.storage_limit_bytes else {
        return (stop, exceeded);
    };
    let (scratch, found, launch) = (launch.scratch.clone(), exceeded.clone(), launch.clone());
    std::thread::spawn(move || {
        let mut pause = STORAGE_CHECK_MIN;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(pause) {
            let began = Instant::now();
            let used = disk_usage(&scratch);
            pause = (began.elapsed() * 10).max(STORAGE_CHECK_MIN);
            if used > limit {
                *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(used);
                end_job(&launch, pid, libc::SIGKILL);
                return;
            }
        }
    });
    (stop, exceeded)
}

/// Bytes allocated to the files under `dir` (not following links, not
/// crossing into other file systems).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let device = root.dev();
    let mut total = root.blocks() * 512;
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != device {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// SIGINT, SIGHUP and SIGTERM do not end the shim.
fn ignore_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SigIgn installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// Starts the job: output into `write_end`, in its own process group,
/// joined to its cgroup and dropped to its user before exec.
fn spawn(launch: &Launch, write_end: OwnedFd) -> std::io::Result<std::process::Child> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("an empty argv"))?;
    let stderr = write_end.try_clone()?;
    let mut command = std::process::Command::new(&launch.program);
    command
        .arg0(program)
        .args(args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::from(stderr))
        .process_group(0);
    let procs = launch
        .cgroup
        .as_ref()
        .map(JobCgroup::procs_files)
        .unwrap_or_default();
    let user = launch.user;
    // The signals the shim ignores are reset for the job by exec (ignored
    // dispositions survive exec, so they are restored here first).
    // SAFETY: only async-signal-safe syscalls on data made before fork.
    unsafe {
        command.pre_exec(move || {
            for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
                libc::signal(sig, libc::SIG_DFL);
            }
            crate::cgroup::join_in_child(&procs)?;
            if let Some((uid, gid)) = user {
                crate::cgroup::drop_to_in_child(uid, gid)?;
            }
            Ok(())
        });
    }
    // The command holds the pipe's write ends; dropping it after the
    // spawn leaves them with the job only, so the pump sees its EOF.
    let child = command.spawn();
    drop(command);
    child
}

/// Writes the handshake line to stdout, then points stdout at /dev/null
/// (the worker reads one line and may be gone later).
fn handshake(line: &Handshake) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes)?;
    stdout.flush()?;
    let null = File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    Ok(())
}

/// Copies the job's output into the log until EOF.
fn pump(read_end: OwnedFd, cap: &Mutex<Option<LogCap>>) {
    let mut pipe = File::from(read_end);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                let mut cap = cap.lock().unwrap_or_else(|p| p.into_inner());
                match cap.as_mut() {
                    Some(cap) => {
                        if let Err(e) = cap.write(&buffer[..n]) {
                            say!("batch-worker shim: main.log: {e}");
                        }
                    }
                    None => return,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits for the job's process, ending it at its timeout.
fn wait(mut child: std::process::Child, launch: &Launch) -> ExitStatus {
    let pid = child.id();
    let Some(timeout_ms) = launch.timeout_ms else {
        return exit_status(child.wait());
    };
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    match waited.recv_timeout(Duration::from_millis(timeout_ms)) {
        Ok(status) => return exit_status(status),
        Err(mpsc::RecvTimeoutError::Disconnected) => return ExitStatus::Code { code: -1 },
        Err(mpsc::RecvTimeoutError::Timeout) => {}
    }
    end_job(launch, pid, libc::SIGTERM);
    if waited
        .recv_timeout(Duration::from_millis(launch.kill_grace_ms))
        .is_err()
    {
        end_job(launch, pid, libc::SIGKILL);
        let _ = waited.recv();
    }
    ExitStatus::TimedOut { timeout_ms }
}

/// Ends the job of `launch` (process `pid`) with `signal`: its
/// [`Launch::kill_argv`] if it has one, else [`end`].
fn end_job(launch: &Launch, pid: u32, signal: i32) {
    match &launch.kill_argv {
        Some(argv) if !argv.is_empty() => {
            let name = if signal == libc::SIGKILL {
                "KILL"
            } else {
                "TERM"
            };
            let ran = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .arg(name)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if !ran.as_ref().is_ok_and(|s| s.success()) {
                say!("batch-worker shim: {argv:?} {name} failed: {ran:?}");
            }
        }
        _ => end(pid, launch.cgroup.as_ref(), signal),
    }
}

/// `signal` to the job's process group and every process of its cgroup.
pub fn end(pid: u32, cgroup: Option<&JobCgroup>, signal: i32) {
    // SAFETY: kill and killpg take plain integers.
    unsafe { libc::killpg(pid as i32, signal) };
    if let Some(cgroup) = cgroup {
        for member in cgroup.pids() {
            unsafe { libc::kill(member, signal) };
        }
    }
}

/// Writes `bytes` to `path` durably: a temporary file, synced, renamed
/// over it, the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    {
        let mut file = File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A log with a cap: the first half of the cap is written as it comes,
/// the last half kept in a ring file beside it (`main.log.tail`), and at
/// the end the ring is appended after a line saying how many bytes were
/// cut between. Disk use stays within the cap whatever the job writes.
#[derive(Debug)]
pub struct LogCap {
    log: File,
    head_limit: u64,
    tail_limit: u64,
    head: u64,
    tail: Option<(File, PathBuf)>,
    tail_written: u64,
    total: u64,
    path_hint: Option<PathBuf>,
}

impl LogCap {
    /// A log writing into `log`, keeping at most `max_bytes` (0: all).
    pub fn new(log: File, max_bytes: u64) -> LogCap {
        let head_limit = if max_bytes == 0 {
            u64::MAX
        } else {
            max_bytes / 2
        };
        LogCap {
            log,
            head_limit,
            tail_limit: max_bytes - max_bytes / 2,
            head: 0,
            tail: None,
            tail_written: 0,
            total: 0,
            path_hint: None,
        }
    }

    /// Where the ring file goes: beside `log_path`.
    pub fn beside(mut self, log_path: &Path) -> LogCap {
        self.path_hint = Some(log_path.to_owned());
        self
    }

    /// Writes `data`: into the head while it has room, then into the ring.
    ///
    /// # Errors
    /// A write failed.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        self.total += data.len() as u64;
        if self.head < self.head_limit {
            let n = (self.head_limit - self.head).min(data.len() as u64) as usize;
            self.log.write_all(&data[..n])?;
            self.head += n as u64;
            data = &data[n..];
        }
        while !data.is_empty() {
            if self.tail.is_none() {
                let path = self.ring_path();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                self.tail = Some((file, path));
            }
            let (ring, _) = self.tail.as_ref().expect("made above");
            let at = self.tail_written % self.tail_limit;
            let n = (self.tail_limit - at).min(data.len() as u64) as usize;
            ring.write_all_at(&data[..n], at)?;
            self.tail_written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn ring_path(&self) -> PathBuf {
        let base = self
            .path_hint
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/self/fd/{}", self.log.as_raw_fd())));
        let mut name = base.into_os_string();
        name.push(".tail");
        PathBuf::from(name)
    }

    /// Appends the ring after the head (with the line saying what was cut
    /// when anything was) and removes the ring. Returns the bytes written
    /// in all and the bytes cut.
    ///
    /// # Errors
    /// A read or write failed.
    pub fn finish(mut self) -> std::io::Result<(u64, u64)> {
        let Some((ring, path)) = self.tail.take() else {
            return Ok((self.total, 0));
        };
        let kept = self.tail_written.min(self.tail_limit);
        let cut = self.tail_written - kept;
        if cut > 0 {
            writeln!(
                self.log,
                "\n[batch-worker: {cut} bytes of output cut here; the log keeps the first {} and the last {kept} of {} bytes]",
                self.head, self.total
            )?;
        }
        let start = if cut > 0 {
            self.tail_written % self.tail_limit
        } else {
            0
        };
        let mut buffer = vec![0u8; 64 * 1024];
        let mut copy = |from: u64, to: u64| -> std::io::Result<()> {
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(buffer.len());
                ring.read_exact_at(&mut buffer[..n], at)?;
                self.log.write_all(&buffer[..n])?;
                at += n as u64;
            }
            Ok(())
        };
        if cut > 0 {
            copy(start, self.tail_limit)?;
            copy(0, start)?;
        } else {
            copy(0, kept)?;
        }
        drop(ring);
        let _ = std::fs::remove_file(path);
        Ok((self.total, cut))
    }
}

/// Reads the shim's handshake line from its stdout.
///
/// # Errors
/// The shim said nothing, or not a handshake.
pub fn read_handshake(stdout: impl Read) -> std::io::Result<Handshake> {
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::other(format!("the shim's handshake {line:?} is not valid: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(max: u64, writes: &[&[u8]]) -> (String, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.log");
        let mut cap = LogCap::new(File::create(&path).unwrap(), max).beside(&path);
        for data in writes {
            cap.write(data).unwrap();
        }
        let (total, cut) = cap.finish().unwrap();
        assert!(!dir.path().join("main.log.tail").exists());
        (std::fs::read_to_string(&path).unwrap(), total, cut)
    }

    #[test]
    fn a_log_within_its_cap_is_kept_whole() {
        let (text, total, cut) = capped(20, &[b"hello ", b"world"]);
        assert_eq!((text.as_str(), total, cut), ("hello world", 11, 0));
        let (text, _, cut) = capped(0, &[&[b'x'; 1000]]);
        assert_eq!((text.len(), cut), (1000, 0));
    }

    #[test]
    fn a_log_over_its_cap_keeps_its_first_and_last_parts_and_says_what_was_cut() {
        let data: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        // In pieces of odd sizes, so that the ring wraps mid-piece.
        let pieces: Vec<&[u8]> = data.chunks(37).collect();
        let (text, total, cut) = capped(100, &pieces);
        assert_eq!((total, cut), (1000, 900));
        let (head, rest) = text.split_at(50);
        assert_eq!(head.as_bytes(), &data[..50]);
        assert!(rest.contains("900 bytes of output cut here"), "{rest}");
        assert!(
            rest.ends_with(std::str::from_utf8(&data[950..]).unwrap()),
            "{rest}"
        );
    }

    #[test]
    fn a_tail_that_did_not_wrap_is_copied_in_order() {
        let (text, total, cut) = capped(10, &[b"0123456", b"ab"]);
        assert_eq!((text.as_str(), total, cut), ("0123456ab", 9, 0));
    }
}
