//! A cgroup per host job: every process the job starts stays in it,
//! whatever it does (`setsid`, a double fork, a new process group), so a
//! timeout, a cancel, the worker's shutdown or a restart ends all of it,
//! and its CPU time and memory can be read from it.
//!
//! Both hierarchies are supported, through their files (no controller is
//! configured, so no crate's model of them is needed):
//!
//! - **v2** (production hosts): `{cgroup2 mount}{the worker's own
//!   cgroup}/{parent}/{job}`. It is ended with `cgroup.kill`, and is empty
//!   when `cgroup.events` says `populated 0`. CPU from `cpu.stat`
//!   (`usage_usec`), memory from `memory.current` / `memory.peak` when the
//!   memory controller is enabled.
//! - **v1**: the same path under each of the `freezer`, `pids`, `cpuacct`
//!   and `memory` hierarchies mounted. It is ended by freezing it, killing
//!   every task listed, and thawing, until no task is left. CPU from
//!   `cpuacct.usage`, memory from `memory.usage_in_bytes` /
//!   `memory.max_usage_in_bytes`.
//!
//! A job joins its cgroups between `fork` and `exec` (it writes its own pid
//! into each `cgroup.procs` with raw syscalls, nothing that allocates), so
//! no process of the job ever runs outside them. The cgroup's name comes
//! from the attempt's key, so a restarted worker finds the cgroups of the
//! jobs it ran before.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batch_worker_model::JobKey;

/// Which cgroup hierarchy jobs are put in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "lower")]
pub enum CgroupMode {
    /// v2 where a cgroup2 file system is mounted with `cgroup.kill`, else
    /// v1 where a freezer or pids hierarchy is mounted, else none (a
    /// warning: jobs are then ended by their process group only).
    Auto,
    /// The unified (v2) hierarchy only.
    V2,
    /// The v1 hierarchies only.
    V1,
    /// No cgroups: process groups only.
    Off,
}

/// Where the cgroups of jobs are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// v2: the parent directory of every job's cgroup.
    V2(PathBuf),
    /// v1: the parent directory in each hierarchy used.
    V1(Vec<PathBuf>),
}

/// Why the job cgroups cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy of the asked mode is mounted.
    #[error("--job-cgroups {mode}: {reason}")]
    Unavailable {
        /// The mode asked for.
        mode: &'static str,
        /// What is missing.
        reason: String,
    },
    /// A cgroup file or directory could not be used.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The v1 hierarchies jobs are put in (those mounted are used).
const V1_CONTROLLERS: [&str; 4] = ["freezer", "pids", "cpuacct", "memory"];

/// One mount of `/proc/self/mountinfo`: its path, type and super options.
struct Mount {
    path: PathBuf,
    fstype: String,
    options: String,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let path = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let _source = right.next();
            let options = right.next().unwrap_or_default().to_owned();
            Some(Mount {
                path: PathBuf::from(unescape(path)),
                fstype,
                options,
            })
        })
        .collect()
}

/// `/proc/self/mountinfo` escapes spaces and the like as `\ooo`.
fn unescape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if let Ok(code) = u8::from_str_radix(&digits, 8) {
                out.push(code as char);
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// This process's cgroup in the hierarchy named by `controller` (`""` for
/// v2), from `/proc/self/cgroup`.
fn own_cgroup(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_owned())
    })
}

/// `mount` + `own` (an absolute cgroup path) + `parent`.
fn under(mount: &Path, own: &str, parent: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/')).join(parent)
}

impl Cgroups {
    /// Finds the hierarchy for `mode` and makes the parent `parent` (a
    /// name, e.g. `batch-worker`) under this process's own cgroup there.
    /// `Ok(None)` for [`CgroupMode::Off`], and for [`CgroupMode::Auto`]
    /// when nothing usable is mounted.
    ///
    /// # Errors
    /// [`CgroupError::Unavailable`] when `V2` or `V1` was asked for and is
    /// not there; [`CgroupError::Io`] when the parent cannot be made.
    pub fn detect(mode: CgroupMode, parent: &str) -> Result<Option<Cgroups>, CgroupError> {
        let mounts = mounts();
        let v2 = || -> Option<PathBuf> {
            let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
            let own = own_cgroup("")?;
            Some(under(&mount.path, &own, parent))
        };
        let v1 = || -> Vec<PathBuf> {
            V1_CONTROLLERS
                .iter()
                .filter_map(|controller| {
                    let mount = mounts.iter().find(|m| {
                        m.fstype == "cgroup" && m.options.split(',').any(|o| o == *controller)
                    })?;
                    let own = own_cgroup(controller)?;
                    Some(under(&mount.path, &own, parent))
                })
                .collect()
        };
        let make = |dir: &Path| {
            std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
                path: dir.to_owned(),
                source,
            })
        };
        let usable_v2 = |dir: PathBuf| -> Result<Option<Cgroups>, CgroupError> {
            make(&dir)?;
            // cgroup.kill (Linux 5.14) is what ends a job whole.
            if dir.join("cgroup.kill").exists() {
                Ok(Some(Cgroups::V2(dir)))
            } else {
                Ok(None)
            }
        };
        match mode {
            CgroupMode::Off => Ok(None),
            CgroupMode::V2 => match v2() {
                Some(dir) => usable_v2(dir)?.map(Some).ok_or(CgroupError::Unavailable {
                    mode: "v2",
                    reason: "the cgroup2 hierarchy has no cgroup.kill (Linux 5.14 or later)".into(),
                }),
                None => Err(CgroupError::Unavailable {
                    mode: "v2",
                    reason: "no cgroup2 file system is mounted".into(),
                }),
            },
            CgroupMode::V1 => {
                let dirs = v1();
                if !dirs.iter().any(|d| {
                    d.components()
                        .any(|c| c.as_os_str() == "freezer" || c.as_os_str() == "pids")
                }) {
                    return Err(CgroupError::Unavailable {
                        mode: "v1",
                        reason: "neither the freezer nor the pids hierarchy is mounted".into(),
                    });
                }
                for dir in &dirs {
                    make(dir)?;
                }
                Ok(Some(Cgroups::V1(dirs)))
            }
            CgroupMode::Auto => {
                if let Some(dir) = v2() {
                    if let Ok(Some(found)) = usable_v2(dir) {
                        return Ok(Some(found));
                    }
                }
                match Cgroups::detect(CgroupMode::V1, parent) {
                    Ok(found) => Ok(found),
                    Err(e) => {
                        tracing::warn!(error = %e, "no cgroups for host jobs: a job that leaves its process group is not ended with it");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// `v2` or `v1`, for logs.
    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2(_) => "v2",
            Cgroups::V1(_) => "v1",
        }
    }

    /// The name of the cgroup of attempt `key` (ids are digits and ASCII
    /// alphanumerics, so it is a safe file name).
    fn name(key: &JobKey) -> String {
        format!("job-{}-{}-{}", key.batch_id, key.job_id, key.attempt_id)
    }

    /// The directories of attempt `key`'s cgroup (one per hierarchy).
    fn dirs(&self, key: &JobKey) -> Vec<PathBuf> {
        let name = Cgroups::name(key);
        match self {
            Cgroups::V2(parent) => vec![parent.join(name)],
            Cgroups::V1(parents) => parents.iter().map(|p| p.join(&name)).collect(),
        }
    }

    /// Makes attempt `key`'s cgroup (empty: a leftover of the same name is
    /// ended first).
    ///
    /// # Errors
    /// A directory cannot be made.
    pub fn create(&self, key: &JobKey) -> Result<JobCgroup, CgroupError> {
        let cgroup = JobCgroup {
            v2: matches!(self, Cgroups::V2(_)),
            dirs: self.dirs(key),
        };
        if cgroup.exists() {
            cgroup.kill_all();
        }
        for dir in &cgroup.dirs {
            std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(cgroup)
    }

    /// Attempt `key`'s cgroup, if it exists (a job from before a restart).
    pub fn existing(&self, key: &JobKey) -> Option<JobCgroup> {
        let cgroup = JobCgroup {
            v2: matches!(self, Cgroups::V2(_)),
            dirs: self.dirs(key),
        };
        cgroup.exists().then_some(cgroup)
    }
}

/// The cgroup of one job (one directory per hierarchy). Serialised into
/// the shim's launch file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobCgroup {
    v2: bool,
    dirs: Vec<PathBuf>,
}

/// What a job's cgroup says it used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time of every process of the job, in µs.
    pub cpu_usec: Option<u64>,
    /// Memory in use now, in bytes.
    pub memory_bytes: Option<u64>,
    /// Most memory in use at once, in bytes.
    pub memory_peak_bytes: Option<u64>,
}

/// Longest wait for a killed cgroup to empty before giving up (logged).
const KILL_WAIT: Duration = Duration::from_secs(10);

impl JobCgroup {
    fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }

    /// The `cgroup.procs` files a process writes its pid into to join,
    /// as C strings (made before `fork`, used after it).
    ///
    /// # Errors
    /// A path holds a NUL byte (it cannot: the names are ids).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok()
            })
            .collect()
    }

    /// The pids in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether a process is still in the cgroup.
    pub fn populated(&self) -> bool {
        if self.v2 {
            return std::fs::read_to_string(self.dirs[0].join("cgroup.events"))
                .map(|events| events.lines().any(|l| l.trim() == "populated 1"))
                .unwrap_or(false);
        }
        !self.pids().is_empty()
    }

    /// Ends every process in the cgroup (SIGKILL) and waits, at most
    /// [`KILL_WAIT`], until it is empty; then removes it. Blocking (a few
    /// ms). Returns whether it is gone.
    pub fn kill_all(&self) -> bool {
        let deadline = std::time::Instant::now() + KILL_WAIT;
        while self.populated() {
            if self.v2 {
                let _ = std::fs::write(self.dirs[0].join("cgroup.kill"), "1");
            } else {
                self.kill_v1();
            }
            if std::time::Instant::now() > deadline {
                tracing::error!(cgroup = %self.dirs[0].display(), pids = ?self.pids(), "a job's cgroup did not empty");
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.remove()
    }

    /// v1: freeze (so nothing forks while it is being killed), SIGKILL
    /// every task, thaw (the kills are delivered).
    fn kill_v1(&self) {
        let freezer = self.dirs.iter().find(|d| d.join("freezer.state").exists());
        if let Some(freezer) = freezer {
            let _ = std::fs::write(freezer.join("freezer.state"), "FROZEN");
            for _ in 0..200 {
                let state = std::fs::read_to_string(freezer.join("freezer.state"));
                if state.is_ok_and(|s| s.trim() == "FROZEN") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for pid in self.pids() {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(freezer) = freezer {
            let _ = std::fs::write(freezer.join("freezer.state"), "THAWED");
        }
    }

    /// Removes the (empty) cgroup's directories; whether they are gone.
    pub fn remove(&self) -> bool {
        let mut gone = true;
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "a job's cgroup not removed");
                    gone = false;
                }
            }
        }
        gone
    }

    /// The CPU time and memory of the job: what the cgroup's accounting
    /// shows, else (a v2 cgroup without the `cpu` and `memory` controllers,
    /// as on a host whose v2 mount has none) the sum over its processes
    /// now, from `/proc` (resident memory; user and system time, which
    /// misses processes that already ended).
    pub fn usage(&self) -> CgroupUsage {
        let accounted = self.accounted();
        if accounted.cpu_usec.is_some() && accounted.memory_bytes.is_some() {
            return accounted;
        }
        let from_proc = processes_usage(&self.pids());
        CgroupUsage {
            cpu_usec: accounted.cpu_usec.or(from_proc.cpu_usec),
            memory_bytes: accounted.memory_bytes.or(from_proc.memory_bytes),
            memory_peak_bytes: accounted.memory_peak_bytes,
        }
    }

    /// The CPU time and memory the cgroup's accounting shows (what it can).
    fn accounted(&self) -> CgroupUsage {
        let read = |file: &str| -> Option<String> {
            self.dirs
                .iter()
                .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
        };
        let number = |file: &str| read(file).and_then(|s| s.trim().parse::<u64>().ok());
        if self.v2 {
            let cpu_usec = read("cpu.stat").and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
            });
            CgroupUsage {
                cpu_usec,
                memory_bytes: number("memory.current"),
                memory_peak_bytes: number("memory.peak"),
            }
        } else {
            CgroupUsage {
                cpu_usec: number("cpuacct.usage").map(|ns| ns / 1000),
                memory_bytes: number("memory.usage_in_bytes"),
                memory_peak_bytes: number("memory.max_usage_in_bytes"),
            }
        }
    }
}

/// CPU time (user + system, µs) and resident memory (bytes) of `pids`
/// now, from `/proc/{pid}/stat` and `/proc/{pid}/statm`; a process that
/// is gone counts nothing.
fn processes_usage(pids: &[i32]) -> CgroupUsage {
    // SAFETY: sysconf reads a constant.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    // SAFETY: as above.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (mut cpu_ticks, mut rss_pages) = (0u64, 0u64);
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the parenthesised command: state is field 3;
            // utime and stime are fields 14 and 15.
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
                cpu_ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
            }
        }
        if let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) {
            rss_pages += statm
                .split_whitespace()
                .nth(1)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    CgroupUsage {
        cpu_usec: Some(cpu_ticks * 1_000_000 / ticks),
        memory_bytes: Some(rss_pages * page),
        memory_peak_bytes: None,
    }
}

/// Between `fork` and `exec`: writes this process's pid into each of
/// `procs` (`cgroup.procs` files). Only raw syscalls and a stack buffer:
/// nothing that allocates or takes a lock.
///
/// # Errors
/// The errno of the first failed open or write.
pub fn join_in_child(procs: &[CString]) -> std::io::Result<()> {
    // SAFETY: getpid, open, write and close are async-signal-safe; the
    // buffer is on the stack and the paths were made before the fork.
    unsafe {
        let mut pid = libc::getpid() as u64;
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let text = &digits[at..];
        for path in procs {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, text.as_ptr().cast(), text.len());
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written < 0 {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Between `fork` and `exec`, after [`join_in_child`] (which needs root):
/// drops to `uid`/`gid` with no supplementary groups. Raw syscalls only.
///
/// # Errors
/// The errno of the first failed call.
pub fn drop_to_in_child(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: setgroups, setgid and setuid are async-signal-safe syscalls
    // with plain arguments.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }

    #[test]
    fn a_cgroup_name_is_made_of_the_key() {
        let key = JobKey {
            batch_id: 3,
            job_id: 4,
            attempt_id: "a5".into(),
        };
        assert_eq!(Cgroups::name(&key), "job-3-4-a5");
        let cgroups = Cgroups::V1(vec!["/x/freezer/bw".into(), "/x/pids/bw".into()]);
        assert_eq!(
            cgroups.dirs(&key),
            vec![
                PathBuf::from("/x/freezer/bw/job-3-4-a5"),
                PathBuf::from("/x/pids/bw/job-3-4-a5")
            ]
        );
    }
}
