//! The runc executor (`--executor runc`): each job runs in its own OCI
//! container, made with the `runc` CLI from a bundle written per job.
//!
//! # One job's container
//!
//! ```text
//! {attempt}/work/              the overlay's upper (writable) layer: the job's
//!                              scratch space on the data disk. Input files are
//!                              staged here before the start, so `/io/in.txt`
//!                              in the spec is /io/in.txt in the container;
//!                              output files are read from here after the exit
//! {attempt}/bundle/config.json the OCI runtime config (oci-spec)
//! {attempt}/bundle/rootfs/     overlay mount: the cached image (read-only
//!                              lower layer, shared by the image's jobs) + work/
//! {attempt}/bundle/overlay/    the overlay's work directory
//! {attempt}/bundle/secrets/N/  secret N's files (mode 0400, directory 0500),
//!                              bind-mounted read-only at its mount_path
//! {attempt}/main.log           runc's and the container's stdout and stderr
//! ```
//!
//! The container is `bw-{batch_id}-{job_id}-{attempt_id}` under the runc
//! state directory `--runc-root` (default `{data_dir}/runc`), its cgroup
//! `/batch-worker/{container}`: memory limited to `resources.memory_bytes`
//! (swap included), CPU to `resources.cores_mcpu` (a CFS quota), processes
//! to [`PIDS_LIMIT`], no network but loopback unless `--container-network
//! host` (the worker's) or `namespace` (a namespace of its own, acquired
//! before the bundle is written and given back after the delete:
//! `container/network.rs`).
//!
//! The job runs as the image's `User`, resolved in the image's own
//! `/etc/passwd` and `/etc/group` (`user.rs`); inputs staged before the
//! start and secret files belong to that user.
//!
//! `runc run --keep` stays in the foreground as the job's process, so its
//! exit is the container's exit code. Ending a container is `runc kill`
//! (SIGTERM, SIGKILL after the grace period), then `runc delete`; the
//! cgroup's out-of-memory count is read before the delete, so an OOM kill
//! becomes [`ExitStatus::OutOfMemory`]. After every job — and for every
//! leftover a restart finds ([`Runner::clean_up`]) — the container is
//! deleted, the overlay unmounted and the bundle (secrets included)
//! removed.
//!
//! This file is long (about 1,230 lines of code, 1,470 with tests) because
//! a bundle, its mounts, the job's network joined, the two ways of running
//! `runc run` (the worker's child, or its shim's, re-attached after a
//! restart) and the cleanup are one concern whose steps must stay in
//! order; the image's user is in `container/user.rs`, the job network's
//! records in `container/network.rs`, the shim's side in `shim.rs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_worker_model::{ExitStatus, JobAddress, JobKey};
use oci_spec::runtime::{
    get_default_mounts, Capabilities, LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, Process, RootBuilder, Spec, UserBuilder,
};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::network::{JobNetwork, NetworkKind};
use crate::runner::{
    AttemptDir, LaunchError, Process as JobProcess, ProcessRequest, Runner, ShimHandle,
};

mod network;
mod user;

pub(crate) use network::on_own_runtime;
pub use network::JobNetworks;
pub use user::{JobUser, UserError};

/// `PATH` in a container whose image sets none.
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CFS period of job cgroups, in µs; the quota is `cores_mcpu` of it.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Most processes (and threads) one container may have at once: a fork
/// bomb in a job fails its own forks, not the worker's.
pub const PIDS_LIMIT: i64 = 4096;

/// Network of job containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerNetwork {
    /// A network namespace of its own with only loopback: no network.
    None,
    /// The worker's network namespace.
    Host,
    /// A network namespace per job, public or private as its spec's
    /// `network` says, as Hail's worker gives it ([`crate::network`]).
    Namespace,
}

/// Settings of the runc executor.
#[derive(Debug, Clone)]
pub struct RuncConfig {
    /// The runc binary (looked up in `PATH` when it has no `/`).
    pub runc: PathBuf,
    /// runc's state directory (`runc --root`): holds only this worker's
    /// containers.
    pub state_dir: PathBuf,
    /// Network of the containers.
    pub network: ContainerNetwork,
    /// The job networks, with [`ContainerNetwork::Namespace`] (required
    /// then, ignored otherwise).
    pub job_networks: Option<JobNetworks>,
    /// Time between SIGTERM and SIGKILL when ending a container.
    pub kill_grace: Duration,
}

/// Runs jobs in runc containers (see the module docs).
#[derive(Debug, Clone)]
pub struct RuncRunner {
    config: RuncConfig,
    /// With a shim, `runc run` is the shim's process, not the worker's: a
    /// container outlives a worker crash and the next worker re-attaches.
    shim: Option<crate::runner::ShimConfig>,
}

impl RuncRunner {
    /// A runner with `config`; makes the state directory.
    ///
    /// # Errors
    /// The state directory cannot be made, or `runc --version` does not run.
    pub fn new(mut config: RuncConfig) -> Result<RuncRunner, LaunchError> {
        // An absolute path: std then spawns with posix_spawn (vfork-like)
        // rather than fork, which would stall every thread of the worker
        // on copy-on-write faults at each `runc` call.
        config.runc = which::which(&config.runc).map_err(|e| {
            let place = if config.runc.components().count() > 1 {
                ""
            } else {
                " in PATH"
            };
            LaunchError(format!(
                "cannot find runc {}{place}: {e}",
                config.runc.display()
            ))
        })?;
        config.runc = std::path::absolute(&config.runc).unwrap_or(config.runc);
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            LaunchError(format!("cannot create {}: {e}", config.state_dir.display()))
        })?;
        let version = std::process::Command::new(&config.runc)
            .arg("--version")
            .output()
            .map_err(|e| LaunchError(format!("cannot run {}: {e}", config.runc.display())))?;
        if !version.status.success() {
            return Err(LaunchError(format!(
                "{} --version failed: {}",
                config.runc.display(),
                String::from_utf8_lossy(&version.stderr).trim()
            )));
        }
        if config.network == ContainerNetwork::Namespace && config.job_networks.is_none() {
            return Err(LaunchError(
                "--container-network namespace: the job networks are not set up".into(),
            ));
        }
        Ok(RuncRunner { config, shim: None })
    }

    /// This runner with each `runc run` handed to a shim (see
    /// [`crate::shim`]): containers outlive a worker crash, and a restarted
    /// worker re-attaches to them ([`Runner::reattach`]).
    pub fn with_shim(mut self, shim: crate::runner::ShimConfig) -> RuncRunner {
        self.shim = Some(shim);
        self
    }

    /// The settings.
    pub fn config(&self) -> &RuncConfig {
        &self.config
    }

    /// The ids of the containers in the state directory (`runc list -q`).
    ///
    /// # Errors
    /// runc failed; its message.
    pub fn list(&self) -> Result<Vec<String>, LaunchError> {
        let out = std::process::Command::new(&self.config.runc)
            .arg("--root")
            .arg(&self.config.state_dir)
            .args(["list", "-q"])
            .output()
            .map_err(|e| LaunchError(format!("runc list: {e}")))?;
        if !out.status.success() {
            return Err(LaunchError(format!(
                "runc list: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn runc(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.config.runc);
        command.arg("--root").arg(&self.config.state_dir);
        command.stdin(Stdio::null()).stdout(Stdio::null());
        command
    }
}

/// A job container's host name: `job-{job_id}`.
fn job_hostname(key: &JobKey) -> String {
    format!("job-{}", key.job_id)
}

/// The container id of attempt `key`.
pub fn container_id(key: &JobKey) -> String {
    format!("bw-{}-{}-{}", key.batch_id, key.job_id, key.attempt_id)
}

/// The cgroup path (within each hierarchy) of container `id`.
fn cgroup_path(id: &str) -> String {
    format!("/batch-worker/{id}")
}

fn bundle_dir(dir: &AttemptDir) -> PathBuf {
    dir.root.join("bundle")
}

/// A container being set up or running; dropping it deletes the
/// container and its bundle (the spawn was abandoned, or the wait ended).
#[derive(Debug)]
struct Cleanup {
    runner: RuncRunner,
    id: String,
    bundle: PathBuf,
    armed: bool,
}

impl Cleanup {
    fn run(&mut self) {
        if std::mem::take(&mut self.armed) {
            clean_up_now(&self.runner, &self.id, &self.bundle);
        }
    }
}

impl RuncRunner {
    /// Container `id`'s job network back to the pool, if it holds one
    /// (after its container is deleted). Blocking.
    fn release_network(&self, id: &str) {
        if let Some(networks) = &self.config.job_networks {
            networks.release_blocking(id);
        }
    }
}

impl Drop for Cleanup {
    /// An abandoned spawn drops its cleanup on an async thread: the runc
    /// calls and the unmount then go to a blocking thread.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let mut rest = Cleanup {
                    runner: self.runner.clone(),
                    id: self.id.clone(),
                    bundle: self.bundle.clone(),
                    armed: std::mem::take(&mut self.armed),
                };
                runtime.spawn_blocking(move || rest.run());
            }
            Err(_) => self.run(),
        }
    }
}

/// Deletes container `id` (if it exists), gives back its job network (if
/// it holds one), unmounts the bundle's root file system and removes the
/// bundle. Blocking; idempotent.
fn clean_up_now(runner: &RuncRunner, id: &str, bundle: &Path) {
    delete_container(runner, id);
    runner.release_network(id);
    remove_bundle(bundle);
}

/// Deletes container `id`, if it exists (its processes with it). Blocking.
fn delete_container(runner: &RuncRunner, id: &str) {
    if runner.config.state_dir.join(id).exists() {
        match runner
            .runc()
            .args(["delete", "--force", id])
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) if out.status.success() => tracing::debug!(container = id, "container deleted"),
            Ok(out) => {
                tracing::warn!(container = id, error = %String::from_utf8_lossy(&out.stderr).trim(), "runc delete failed")
            }
            Err(e) => tracing::warn!(container = id, error = %e, "runc delete failed"),
        }
    }
}

/// Unmounts the bundle's root file system and removes the bundle.
/// Blocking; idempotent.
fn remove_bundle(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    // Not mounted (EINVAL) or gone (ENOENT) is fine.
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_dir_all(bundle) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(bundle = %bundle.display(), error = %e, "bundle not removed"),
    }
}

#[async_trait]
impl Runner for RuncRunner {
    /// Writes the bundle (overlay root, secrets, config.json) and starts
    /// `runc run --keep`; resolves once the container's process runs (its
    /// pid file is written).
    ///
    /// # Errors
    /// [`LaunchError`]: no image (the spec has no `process.image`), the
    /// bundle cannot be made, or runc refused (its message, from the log).
    async fn spawn(&self, request: &ProcessRequest) -> Result<Box<dyn JobProcess>, LaunchError> {
        let runner = self.clone();
        let memory_limit_bytes = request.memory_bytes;
        let id = container_id(&request.key);
        // From here on, dropping the cleanup (an abandoned spawn, a
        // failure) deletes what was made and gives the network back.
        let cleanup = Cleanup {
            runner: self.clone(),
            id: id.clone(),
            bundle: bundle_dir(&request.dir),
            armed: true,
        };
        let network = match (&self.config.job_networks, self.config.network) {
            (Some(networks), ContainerNetwork::Namespace) => {
                let kind = request.network.unwrap_or(NetworkKind::Public);
                let network = networks
                    .acquire(&request.key, &id, kind, request.port)
                    .await
                    .map_err(|e| LaunchError(format!("cannot set up the job's network: {e}")))?;
                Some(network)
            }
            _ => None,
        };
        let address = network.as_ref().map(network::address);
        let request = request.clone();
        let root = request.dir.root.clone();
        let (start, cleanup) = tokio::task::spawn_blocking(move || {
            runner.start_now(&request, cleanup, network.as_ref())
        })
        .await
        .map_err(|e| LaunchError(format!("the spawning thread failed: {e}")))??;
        let pid_file = cleanup.bundle.join("pid");
        let waiter = match start {
            Start::Runc(child) => Waiter::Runc(child),
            Start::Shim { binary, launch } => {
                let launch = serde_json::to_vec(&launch)
                    .map_err(|e| LaunchError(format!("the shim's launch: {e}")))?;
                Waiter::Shim(ShimHandle::start(&binary, &root, &launch, None).await?)
            }
        };
        let mut process = RuncProcess {
            waiter,
            pid: 0,
            started: Instant::now(),
            memory_limit_bytes,
            cleanup,
            address,
        };
        // runc writes the pid file once the container's process exists.
        loop {
            if let Some(pid) = read_pid(&pid_file) {
                process.pid = pid;
                break;
            }
            let ended = match &mut process.waiter {
                Waiter::Runc(child) => matches!(child.try_wait(), Ok(Some(_))),
                Waiter::Shim(handle) => tokio::select! {
                    _ = handle.exited() => true,
                    () = tokio::time::sleep(Duration::from_millis(5)) => false,
                },
            };
            if ended {
                if let Some(pid) = read_pid(&pid_file) {
                    // Started and already ended.
                    process.pid = pid;
                    break;
                }
                let log = request_log_tail(&process.cleanup.bundle);
                return Err(LaunchError(format!(
                    "runc could not start the container: {log}"
                )));
            }
            if matches!(process.waiter, Waiter::Runc(_)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(Box::new(process))
    }

    fn reattaches(&self) -> bool {
        self.shim.is_some()
    }

    /// A container from before a restart whose shim still runs or recorded
    /// its end: re-attached (waited for, then deleted as every container).
    fn reattach(&self, key: &JobKey, dir: &AttemptDir) -> Option<(u32, Box<dyn JobProcess>)> {
        self.shim.as_ref()?;
        let handle = ShimHandle::find(&dir.root)?;
        let bundle = bundle_dir(dir);
        let pid = read_pid(&bundle.join("pid")).unwrap_or(handle.pid);
        // The limit it was started with, for an out-of-memory end.
        let memory_limit_bytes = Spec::load(bundle.join("config.json"))
            .ok()
            .and_then(|spec| spec.linux().clone())
            .and_then(|linux| linux.resources().clone())
            .and_then(|resources| *resources.memory())
            .and_then(|memory| memory.limit())
            .map_or(0, |limit| limit.max(0) as u64);
        let id = container_id(key);
        let address = self
            .config
            .job_networks
            .as_ref()
            .and_then(|n| n.of(&id))
            .map(|n| network::address(&n));
        tracing::info!(%key, pid, network = ?address, "container re-attached");
        Some((
            pid,
            Box::new(RuncProcess {
                waiter: Waiter::Shim(handle),
                pid,
                started: Instant::now(),
                memory_limit_bytes,
                cleanup: Cleanup {
                    runner: self.clone(),
                    id,
                    bundle,
                    armed: true,
                },
                address,
            }),
        ))
    }

    /// The container's cgroup (v2, else v1's memory and cpuacct
    /// hierarchies), where runc made it.
    fn usage(&self, key: &JobKey) -> Option<crate::cgroup::CgroupUsage> {
        let path = cgroup_path(&container_id(key));
        let number = |file: String| {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let v2 = format!("/sys/fs/cgroup{path}");
        if std::path::Path::new(&v2).join("cgroup.procs").exists()
            && std::path::Path::new(&v2).join("memory.current").exists()
        {
            let cpu_usec = std::fs::read_to_string(format!("{v2}/cpu.stat"))
                .ok()
                .and_then(|stat| {
                    stat.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse().ok())
                });
            return Some(crate::cgroup::CgroupUsage {
                cpu_usec,
                memory_bytes: number(format!("{v2}/memory.current")),
                memory_peak_bytes: number(format!("{v2}/memory.peak")),
            });
        }
        let memory_bytes = number(format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"));
        let cpu_usec = ["cpuacct", "cpu,cpuacct"]
            .iter()
            .find_map(|h| number(format!("/sys/fs/cgroup/{h}{path}/cpuacct.usage")))
            .map(|ns| ns / 1000);
        (memory_bytes.is_some() || cpu_usec.is_some()).then_some(crate::cgroup::CgroupUsage {
            cpu_usec,
            memory_bytes,
            memory_peak_bytes: number(format!(
                "/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes"
            )),
        })
    }

    fn kill_grace(&self) -> Duration {
        self.config.kill_grace
    }

    /// Removes the job networks (namespaces, veths, chains) when no job
    /// holds one.
    fn stopped(&self) {
        if let Some(networks) = &self.config.job_networks {
            networks.close_blocking();
        }
    }

    /// The job's veth counters, when it has a network of its own.
    fn network_bytes(&self, key: &JobKey) -> Option<(u64, u64)> {
        self.config.job_networks.as_ref()?.bytes(&container_id(key))
    }

    fn clean_up(&self, key: &JobKey, dir: &AttemptDir) -> bool {
        let id = container_id(key);
        let bundle = bundle_dir(dir);
        if self.config.state_dir.join(&id).exists() || bundle.exists() {
            tracing::info!(%key, container = %id, "removing a container left by an earlier run");
            clean_up_now(self, &id, &bundle);
        }
        true
    }
}

impl RuncRunner {
    /// The blocking part of [`Runner::spawn`]: the bundle, then `runc run`
    /// started, or, with a shim, what the shim is to start.
    fn start_now(
        &self,
        request: &ProcessRequest,
        cleanup: Cleanup,
        network: Option<&JobNetwork>,
    ) -> Result<(Start, Cleanup), LaunchError> {
        let image = request.image.as_ref().ok_or_else(|| {
            LaunchError(
                "the spec has no process.image; the runc executor runs every job in its image"
                    .into(),
            )
        })?;
        let id = cleanup.id.clone();
        let bundle = cleanup.bundle.clone();
        // A leftover of this attempt (a spawn abandoned mid-way) goes first
        // (its network, if it had one, went back when it was abandoned).
        delete_container(self, &id);
        remove_bundle(&bundle);
        let fail = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            LaunchError(format!("cannot {what} {}: {e}", path.display()))
        };
        let work = request.dir.work();
        let rootfs = bundle.join("rootfs");
        let overlay_work = bundle.join("overlay");
        for dir in [&work, &rootfs, &overlay_work] {
            std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, &e))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.rootfs.display(),
            work.display(),
            overlay_work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| fail("mount the image's overlay on", &rootfs, &e))?;
        let user = user::resolve(&image.rootfs, image.user.as_deref())
            .map_err(|e| LaunchError(e.to_string()))?;
        settle_staged(&work, &image.rootfs, &user)?;
        let secret_mounts = write_secrets(&bundle, request, &user)?;
        let joined = match network {
            Some(network) => Some(self.network_files(&bundle, network, &request.key)?),
            None => None,
        };
        let spec = runtime_spec(
            request,
            &id,
            secret_mounts,
            self.config.network,
            joined.as_ref(),
            &user,
        )?;
        let config = bundle.join("config.json");
        spec.save(&config).map_err(|e| fail("write", &config, &e))?;
        let log_path = request.dir.main_log();
        let runc_args = |tail: &[&str]| -> Vec<String> {
            let mut argv = vec![
                self.config.runc.to_string_lossy().into_owned(),
                "--root".to_owned(),
                self.config.state_dir.to_string_lossy().into_owned(),
            ];
            argv.extend(tail.iter().map(|a| (*a).to_owned()));
            argv
        };
        if let Some(shim) = &self.shim {
            let bundle_text = bundle.to_string_lossy().into_owned();
            let pid_text = bundle.join("pid").to_string_lossy().into_owned();
            let launch = crate::shim::Launch {
                program: self.config.runc.clone(),
                argv: runc_args(&[
                    "run",
                    "--keep",
                    "--bundle",
                    &bundle_text,
                    "--pid-file",
                    &pid_text,
                    &id,
                ]),
                env: vec![(
                    "PATH".to_owned(),
                    std::env::var("PATH").unwrap_or_else(|_| crate::runner::DEFAULT_PATH.into()),
                )],
                cwd: bundle.clone(),
                log: log_path,
                max_log_bytes: shim.max_log_bytes,
                cgroup: None,
                user: None,
                niceness: 0,
                timeout_ms: request.timeout.map(|t| t.as_millis() as u64),
                kill_grace_ms: self.config.kill_grace.as_millis() as u64,
                storage_limit_bytes: request
                    .storage_bytes
                    .or((shim.default_storage_bytes > 0).then_some(shim.default_storage_bytes)),
                scratch: work.clone(),
                kill_argv: Some(runc_args(&["kill", "--all", &id])),
            };
            let start = Start::Shim {
                binary: shim.binary.clone(),
                launch,
            };
            return Ok((start, cleanup));
        }
        let log = std::fs::File::create(&log_path).map_err(|e| fail("create", &log_path, &e))?;
        let log_err = log.try_clone().map_err(|e| fail("open", &log_path, &e))?;
        let mut command = Command::new(&self.config.runc);
        command
            .arg("--root")
            .arg(&self.config.state_dir)
            .args(["run", "--keep", "--bundle"])
            .arg(&bundle)
            .arg("--pid-file")
            .arg(bundle.join("pid"))
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| fail("run", &self.config.runc, &e))?;
        Ok((Start::Runc(child), cleanup))
    }
}

/// What a container joins of its job network: the namespace, the files
/// bind-mounted at `/etc/resolv.conf` and `/etc/hosts`, and the variables
/// Hail gives a job with a published port.
#[derive(Debug)]
struct Joined {
    netns_path: PathBuf,
    resolv_conf: PathBuf,
    hosts: PathBuf,
    /// `HAIL_BATCH_WORKER_PORT` (the host port) and `HAIL_BATCH_WORKER_IP`
    /// (the worker's address), when the job has a port.
    env: Vec<(String, String)>,
}

impl RuncRunner {
    /// Writes `network`'s resolver and hosts files into the bundle (world
    /// readable, mounted read-only); the hosts file also names the job's
    /// host name at its address, as Hail's does.
    fn network_files(
        &self,
        bundle: &Path,
        network: &JobNetwork,
        key: &JobKey,
    ) -> Result<Joined, LaunchError> {
        use std::os::unix::fs::PermissionsExt;
        let write = |name: &str, text: &str| {
            let path = bundle.join(name);
            std::fs::write(&path, text)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(|e| LaunchError(format!("cannot write {}: {e}", path.display())))?;
            Ok::<_, LaunchError>(path)
        };
        let worker_ip = self
            .config
            .job_networks
            .as_ref()
            .map_or("", |n| n.worker_ip())
            .to_owned();
        Ok(Joined {
            netns_path: network.netns_path.clone(),
            resolv_conf: write("resolv.conf", &network.resolv_conf)?,
            hosts: write(
                "hosts",
                &format!(
                    "{}{}\t{}\n",
                    network.hosts,
                    network.job_ip,
                    job_hostname(key)
                ),
            )?,
            env: network
                .published
                .map(|(host_port, _)| {
                    vec![
                        ("HAIL_BATCH_WORKER_PORT".to_owned(), host_port.to_string()),
                        ("HAIL_BATCH_WORKER_IP".to_owned(), worker_ip),
                    ]
                })
                .unwrap_or_default(),
        })
    }
}

/// How a container was started: `runc run` as the worker's child, or what
/// its shim is to run.
enum Start {
    Runc(Child),
    Shim {
        binary: PathBuf,
        launch: crate::shim::Launch,
    },
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The end of the attempt's log (runc's error when it refused), ≤ 1 KiB.
fn request_log_tail(bundle: &Path) -> String {
    let log = bundle.parent().map(|root| root.join("main.log"));
    let text = log
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(1024)..]).into_owned())
        .unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        "runc exited without a message".to_owned()
    } else {
        text.to_owned()
    }
}

/// Settles what the worker staged in `work` (the overlay's upper layer)
/// before the start: input files, and the directories made to hold them.
/// A directory the image also has takes the image's owner and mode, as an
/// overlay copy-up would (an input in `/tmp` leaves `/tmp` 1777 and
/// root's, an input in `/etc` leaves `/etc` root's); the rest belongs to
/// the job's user, so a job that is not root can write next to its inputs.
/// `work` itself is the container's `/`. Symlinks are not followed, on
/// either side.
fn settle_staged(work: &Path, rootfs: &Path, user: &JobUser) -> Result<(), LaunchError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        LaunchError(format!("cannot {what} {}: {e}", path.display()))
    };
    // (directory relative to `work`, whether the image has it as a real
    // directory, every component on the way too)
    let mut todo = vec![(PathBuf::new(), true)];
    while let Some((dir, in_image)) = todo.pop() {
        let entries =
            std::fs::read_dir(work.join(&dir)).map_err(|e| fail("read", &work.join(&dir), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail("read", &work.join(&dir), e))?;
            let rel = dir.join(entry.file_name());
            let path = work.join(&rel);
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let image_dir = (is_dir && in_image)
                .then(|| std::fs::symlink_metadata(rootfs.join(&rel)).ok())
                .flatten()
                .filter(|m| m.is_dir());
            match &image_dir {
                Some(meta) => {
                    std::os::unix::fs::lchown(&path, Some(meta.uid()), Some(meta.gid()))
                        .map_err(|e| fail("give the image's owner to", &path, e))?;
                    std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                    )
                    .map_err(|e| fail("give the image's mode to", &path, e))?;
                }
                None if user.uid == 0 && user.gid == 0 => {}
                None => std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))
                    .map_err(|e| fail(&format!("give uid {} the file", user.uid), &path, e))?,
            }
            if is_dir {
                todo.push((rel, image_dir.is_some()));
            }
        }
    }
    Ok(())
}

/// Writes each secret's files under `bundle/secrets/{i}/` (directory 0500,
/// files 0400, owned by the job's user) and returns `(host directory,
/// mount path)` pairs.
fn write_secrets(
    bundle: &Path,
    request: &ProcessRequest,
    user: &JobUser,
) -> Result<Vec<(PathBuf, String)>, LaunchError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let mut mounts = Vec::new();
    for (i, secret) in request.secrets.iter().enumerate() {
        let dir = bundle.join("secrets").join(i.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LaunchError(format!("cannot create {}: {e}", dir.display())))?;
        for (name, bytes) in secret.files() {
            let path = dir.join(&name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&path)
                .map_err(|e| {
                    LaunchError(format!("cannot create secret file {}: {e}", path.display()))
                })?;
            file.write_all(bytes.expose()).map_err(|e| {
                LaunchError(format!("cannot write secret file {}: {e}", path.display()))
            })?;
            std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid)).map_err(|e| {
                LaunchError(format!("cannot give {} to the job: {e}", path.display()))
            })?;
        }
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
            .map_err(|e| LaunchError(format!("cannot give {} to the job: {e}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
            .map_err(|e| LaunchError(format!("cannot protect {}: {e}", dir.display())))?;
        mounts.push((dir, secret.mount_path.clone()));
    }
    Ok(mounts)
}

/// The OCI runtime config of one job.
fn runtime_spec(
    request: &ProcessRequest,
    id: &str,
    secret_mounts: Vec<(PathBuf, String)>,
    network: ContainerNetwork,
    joined: Option<&Joined>,
    user: &JobUser,
) -> Result<Spec, LaunchError> {
    let invalid = |e: oci_spec::OciSpecError| LaunchError(format!("invalid runtime config: {e}"));
    let image = request.image.as_ref().expect("checked by the caller");
    let mut process = Process::default();
    let args: Vec<String> = image
        .entrypoint
        .iter()
        .chain(&request.argv)
        .cloned()
        .collect();
    process.set_args(Some(args));
    let extra_env = joined.map_or(&[][..], |j| &j.env[..]);
    process.set_env(Some(container_env(request, &user.home, extra_env)));
    process.set_user(
        UserBuilder::default()
            .uid(user.uid)
            .gid(user.gid)
            .additional_gids(user.additional_gids.clone())
            .build()
            .map_err(invalid)?,
    );
    process.set_cwd(PathBuf::from(image.working_dir.as_deref().unwrap_or("/")));
    process.set_capabilities(Some(job_capabilities()));
    // Under memory pressure the kernel ends a job's process before the
    // worker's.
    process.set_oom_score_adj(Some(1000));
    let mut mounts = get_default_mounts();
    // Secrets, then the job network's files: read-only binds.
    let network_files = joined.map(|j| {
        [
            (j.resolv_conf.clone(), "/etc/resolv.conf".to_owned()),
            (j.hosts.clone(), "/etc/hosts".to_owned()),
        ]
    });
    for (source, destination) in secret_mounts
        .into_iter()
        .chain(network_files.into_iter().flatten())
    {
        mounts.push(
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(source)
                .options(vec![
                    "rbind".into(),
                    "ro".into(),
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                ])
                .build()
                .map_err(invalid)?,
        );
    }
    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(invalid)?])
        .pids(
            LinuxPidsBuilder::default()
                .limit(PIDS_LIMIT)
                .build()
                .map_err(invalid)?,
        );
    if request.memory_bytes > 0 {
        let limit = i64::try_from(request.memory_bytes).unwrap_or(i64::MAX);
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(invalid)?,
        );
    }
    if request.cores_mcpu > 0 {
        let quota = request.cores_mcpu.saturating_mul(CPU_PERIOD_US) / 1000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(i64::try_from(quota.max(1000)).unwrap_or(i64::MAX))
                .period(CPU_PERIOD_US)
                .build()
                .map_err(invalid)?,
        );
    }
    let defaults = oci_spec::runtime::Linux::default();
    let namespaces = defaults
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| network != ContainerNetwork::Host || ns.typ() != LinuxNamespaceType::Network)
        .map(|mut ns| {
            // The job's own namespace, made by the worker: joined by path.
            if let (LinuxNamespaceType::Network, Some(joined)) = (ns.typ(), joined) {
                ns.set_path(Some(joined.netns_path.clone()));
            }
            ns
        })
        .collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroup_path(id)))
        .resources(resources.build().map_err(invalid)?);
    if let Some(masked) = defaults.masked_paths() {
        linux = linux.masked_paths(masked.clone());
    }
    if let Some(readonly) = defaults.readonly_paths() {
        linux = linux.readonly_paths(readonly.clone());
    }
    let mut spec = Spec::default();
    spec.set_hostname(Some(job_hostname(&request.key)));
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(invalid)?,
    ));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux.build().map_err(invalid)?));
    Ok(spec)
}

/// The capabilities of a job's processes: Docker's default set, which
/// images are written for (`apt-get install` needs `CHOWN`, `FOWNER`,
/// `SETUID`...), without `MKNOD` (a device node in the job's upper
/// directory is a file on the host's disk) and `NET_RAW` (no network).
fn job_capabilities() -> LinuxCapabilities {
    use oci_spec::runtime::Capability::*;
    let set: Capabilities = [
        AuditWrite,
        Chown,
        DacOverride,
        Fowner,
        Fsetid,
        Kill,
        NetBindService,
        Setfcap,
        Setgid,
        Setpcap,
        Setuid,
        SysChroot,
    ]
    .into_iter()
    .collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(set.clone()));
    capabilities.set_effective(Some(set.clone()));
    capabilities.set_permitted(Some(set));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    capabilities
}

/// The container's environment: the image's `Env`, then `HAIL_*` ids, then
/// the job's `env`, then `extra` (the published port's variables; later
/// entries win); `PATH` from the image or [`CONTAINER_PATH`]; `HOME` the
/// user's `home` unless one of them set it.
fn container_env(request: &ProcessRequest, home: &str, extra: &[(String, String)]) -> Vec<String> {
    let image = request.image.as_ref().expect("checked by the caller");
    // Later entries win, in the place of the first: linear in the number
    // of variables (a spec may carry very many).
    let mut env: Vec<(String, String)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut set = |name: &str, value: &str| match index.get(name) {
        Some(&i) => env[i].1 = value.to_owned(),
        None => {
            index.insert(name.to_owned(), env.len());
            env.push((name.to_owned(), value.to_owned()));
        }
    };
    set("PATH", CONTAINER_PATH);
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(name, value);
    }
    set("HAIL_BATCH_ID", &request.key.batch_id.to_string());
    set("HAIL_JOB_ID", &request.key.job_id.to_string());
    set("HAIL_ATTEMPT_ID", &request.key.attempt_id);
    for var in &request.env {
        set(&var.name, &var.value);
    }
    for (name, value) in extra {
        set(name, value);
    }
    if !index.contains_key("HOME") {
        env.push(("HOME".to_owned(), home.to_owned()));
    }
    env.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// What a container's end is waited for through.
#[derive(Debug)]
enum Waiter {
    /// `runc run`, the worker's child.
    Runc(Child),
    /// The shim that runs `runc run`.
    Shim(ShimHandle),
}

/// A running container: the `runc run` process in the foreground (the
/// worker's, or its shim's).
#[derive(Debug)]
pub struct RuncProcess {
    waiter: Waiter,
    pid: u32,
    started: Instant,
    memory_limit_bytes: u64,
    cleanup: Cleanup,
    /// The job's own network, when it has one.
    address: Option<JobAddress>,
}

#[async_trait]
impl JobProcess for RuncProcess {
    /// The container's first process, as the host sees it.
    fn pid(&self) -> u32 {
        self.pid
    }

    fn network(&self) -> Option<JobAddress> {
        self.address.clone()
    }

    /// See [`crate::runner::Process::wait`]: a kill is `runc kill` SIGTERM,
    /// then SIGKILL after the grace period. Before returning, the
    /// container is deleted and its bundle removed.
    async fn wait(
        mut self: Box<Self>,
        timeout: Option<Duration>,
        kill: CancellationToken,
    ) -> (ExitStatus, u64) {
        if matches!(self.waiter, Waiter::Shim(_)) {
            return self.wait_shim(kill).await;
        }
        let timer = crate::runner::run_out(timeout);
        let status = tokio::select! {
            status = self.child_wait() => Some(status),
            () = timer => {
                let _ = self.end().await;
                return self.finish(ExitStatus::TimedOut {
                    timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
                }).await;
            }
            () = kill.cancelled() => None,
        };
        let status = match status {
            Some(status) => status,
            None => self.end().await,
        };
        let code = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            }
            Err(_) => -1,
        };
        let exit = self.with_oom(code);
        self.finish(exit).await
    }
}

impl RuncProcess {
    /// `runc run`'s end (the worker's child).
    async fn child_wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match &mut self.waiter {
            Waiter::Runc(child) => child.wait().await,
            Waiter::Shim(_) => std::future::pending().await,
        }
    }

    /// The end of a container run by its shim: the shim's record (its
    /// timeout and storage bound are the shim's); a kill is `runc kill`
    /// SIGTERM, SIGKILL after the grace period.
    async fn wait_shim(self: Box<Self>, kill: CancellationToken) -> (ExitStatus, u64) {
        let RuncProcess {
            waiter,
            started,
            memory_limit_bytes,
            mut cleanup,
            ..
        } = *self;
        let Waiter::Shim(mut handle) = waiter else {
            unreachable!("checked by the caller");
        };
        let grace = cleanup.runner.config.kill_grace;
        let shim_status = tokio::select! {
            status = handle.exited() => status,
            () = kill.cancelled() => {
                signal_container(&cleanup, "TERM").await;
                match tokio::time::timeout(grace, handle.exited()).await {
                    Ok(status) => status,
                    Err(_) => {
                        signal_container(&cleanup, "KILL").await;
                        handle.exited().await
                    }
                }
            }
        };
        let (status, duration_ms) = handle.end(shim_status, started);
        let exit = match status {
            ExitStatus::Code { code } => with_oom(&cleanup.id, memory_limit_bytes, code),
            ExitStatus::Signal { signal } => {
                with_oom(&cleanup.id, memory_limit_bytes, 128 + signal)
            }
            other => other,
        };
        let _ = tokio::task::spawn_blocking(move || cleanup.run()).await;
        (exit, duration_ms)
    }

    /// `code`, or an out-of-memory end when the container's cgroup saw an
    /// OOM kill and the job failed. An OOM kill the job survived (a child
    /// killed, the job exiting 0 all the same) is the job's own business.
    fn with_oom(&self, code: i32) -> ExitStatus {
        with_oom(&self.cleanup.id, self.memory_limit_bytes, code)
    }

    /// `runc kill` SIGTERM, SIGKILL after the grace period; waits for
    /// `runc run` to return.
    async fn end(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let grace = self.cleanup.runner.config.kill_grace;
        self.signal("TERM").await;
        match tokio::time::timeout(grace, self.child_wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.signal("KILL").await;
                self.child_wait().await
            }
        }
    }

    async fn signal(&self, signal: &str) {
        signal_container(&self.cleanup, signal).await;
    }
}

/// See [`RuncProcess::with_oom`]: container `id`, limited to
/// `memory_limit_bytes`, ended with `code`.
fn with_oom(id: &str, memory_limit_bytes: u64, code: i32) -> ExitStatus {
    if code != 0 && oom_kills(id) > 0 {
        ExitStatus::OutOfMemory {
            code,
            memory_limit_bytes,
        }
    } else {
        ExitStatus::Code { code }
    }
}

/// `runc kill --all` with `signal` to the container of `cleanup`.
async fn signal_container(cleanup: &Cleanup, signal: &str) {
    let config = &cleanup.runner.config;
    let result = Command::new(&config.runc)
        .arg("--root")
        .arg(&config.state_dir)
        .args(["kill", "--all", &cleanup.id, signal])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    tracing::debug!(container = %cleanup.id, signal, ok = result.is_ok_and(|s| s.success()), "runc kill");
}

impl RuncProcess {
    /// Deletes the container and its bundle (off the async threads).
    async fn finish(self: Box<Self>, exit: ExitStatus) -> (ExitStatus, u64) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let RuncProcess { mut cleanup, .. } = *self;
        let _ = tokio::task::spawn_blocking(move || cleanup.run()).await;
        (exit, duration_ms)
    }
}

/// How many processes of container `id` the out-of-memory killer ended
/// (cgroup v1 `memory.oom_control`, or v2 `memory.events`); 0 when unknown.
fn oom_kills(id: &str) -> u64 {
    let path = cgroup_path(id);
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
    let v2 = PathBuf::from(format!("/sys/fs/cgroup{path}/memory.events"));
    [v1, v2]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PulledImage;
    use crate::wire::EnvVar;
    use std::sync::Arc;

    fn request(dir: &Path) -> ProcessRequest {
        let key = JobKey {
            batch_id: 7,
            job_id: 3,
            attempt_id: "Ab12".into(),
        };
        ProcessRequest {
            dir: AttemptDir::new(dir, &key),
            key,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![EnvVar {
                name: "BW_IMAGE_ENV".into(),
                value: "from-job".into(),
            }],
            image: Some(Arc::new(PulledImage {
                reference: "r.example/busybox:1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                rootfs: dir.join("rootfs"),
                env: vec!["BW_IMAGE_ENV=from-image".into(), "LANG=C".into()],
                working_dir: Some("/srv".into()),
                entrypoint: vec!["/bin/entry".into()],
                user: None,
            })),
            cores_mcpu: 1500,
            memory_bytes: 64 << 20,
            network: None,
            port: None,
            secrets: Vec::new(),
            timeout: None,
            storage_bytes: None,
        }
    }

    #[test]
    fn the_runtime_config_carries_argv_env_cwd_limits_and_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let request = request(dir.path());
        let spec = runtime_spec(
            &request,
            "bw-7-3-Ab12",
            vec![(dir.path().join("s/0"), "/gsa-key".into())],
            ContainerNetwork::None,
            None,
            &JobUser {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10],
                home: "/home/app".into(),
            },
        )
        .unwrap();
        let process = spec.process().clone().unwrap();
        assert_eq!(
            process.args().clone().unwrap(),
            ["/bin/entry", "sh", "-c", "echo hi"]
        );
        let env = process.env().clone().unwrap();
        assert!(env.contains(&"BW_IMAGE_ENV=from-job".to_owned()), "{env:?}");
        assert!(
            !env.contains(&"BW_IMAGE_ENV=from-image".to_owned()),
            "{env:?}"
        );
        assert!(env.contains(&"LANG=C".to_owned()));
        assert!(env.contains(&"HAIL_JOB_ID=3".to_owned()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(env.contains(&"HOME=/home/app".to_owned()), "{env:?}");
        assert_eq!(process.cwd(), Path::new("/srv"));
        let user = process.user();
        assert_eq!((user.uid(), user.gid()), (1000, 1001));
        assert_eq!(user.additional_gids().clone().unwrap(), [10]);
        let linux = spec.linux().clone().unwrap();
        let resources = linux.resources().clone().unwrap();
        assert_eq!(resources.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(resources.memory().unwrap().swap(), Some(64 << 20));
        assert_eq!(resources.cpu().clone().unwrap().quota(), Some(150_000));
        assert_eq!(
            resources.cpu().clone().unwrap().period(),
            Some(CPU_PERIOD_US)
        );
        assert_eq!(resources.pids().unwrap().limit(), PIDS_LIMIT);
        let capabilities = process.capabilities().clone().unwrap();
        let effective = capabilities.effective().clone().unwrap();
        assert!(effective.contains(&oci_spec::runtime::Capability::Chown));
        assert!(!effective.contains(&oci_spec::runtime::Capability::Mknod));
        assert!(!effective.contains(&oci_spec::runtime::Capability::SysAdmin));
        let namespaces = linux.namespaces().clone().unwrap();
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        assert_eq!(
            linux.cgroups_path().clone().unwrap(),
            PathBuf::from("/batch-worker/bw-7-3-Ab12")
        );
        let secret = spec
            .mounts()
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.destination() == Path::new("/gsa-key"))
            .unwrap();
        assert!(secret.options().clone().unwrap().contains(&"ro".to_owned()));
    }

    #[test]
    fn many_environment_variables_take_linear_time_and_later_ones_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut request = request(dir.path());
        request.env = (0..100_000)
            .map(|i| EnvVar {
                name: format!("V{}", i % 50_000),
                value: i.to_string(),
            })
            .collect();
        let started = std::time::Instant::now();
        let env = container_env(&request, "/", &[]);
        // Quadratic, this took minutes; linear, a few ms (debug build).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(env.contains(&"V0=50000".to_owned()));
        assert_eq!(env.iter().filter(|e| e.starts_with("V7=")).count(), 1);
    }

    #[test]
    fn staged_directories_the_image_has_keep_its_owner_and_mode_the_rest_is_the_users() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (rootfs, work) = (dir.path().join("rootfs"), dir.path().join("work"));
        for d in ["tmp", "etc", "data"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::os::unix::fs::chown(rootfs.join("data"), Some(7), Some(8)).unwrap();
        // /lnk is a symlink in the image: a staged lnk/ is not the image's.
        std::os::unix::fs::symlink("/", rootfs.join("lnk")).unwrap();
        for f in ["tmp/a", "etc/b", "io/x/c", "data/d", "lnk/e"] {
            let path = work.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let user = JobUser {
            uid: 1000,
            gid: 1001,
            additional_gids: vec![],
            home: "/".into(),
        };
        settle_staged(&work, &rootfs, &user).unwrap();
        let of = |rel: &str| {
            let m = std::fs::symlink_metadata(work.join(rel)).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        assert_eq!(of("tmp"), (0, 0, 0o1777));
        assert_eq!(of("etc").0, 0);
        assert_eq!(of("data"), (7, 8, 0o755));
        for mine in [
            "tmp/a", "etc/b", "io", "io/x", "io/x/c", "data/d", "lnk", "lnk/e",
        ] {
            assert_eq!((of(mine).0, of(mine).1), (1000, 1001), "{mine}");
        }
        // Root's job: only the image's directories change.
        std::fs::set_permissions(work.join("tmp"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = JobUser {
            uid: 0,
            gid: 0,
            ..user
        };
        settle_staged(&work, &rootfs, &root).unwrap();
        assert_eq!(of("tmp"), (0, 0, 0o1777));
        assert_eq!(of("io/x/c").0, 1000, "left as it was");
    }

    #[test]
    fn host_network_keeps_the_workers_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let root = JobUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        };
        let spec = runtime_spec(
            &request(dir.path()),
            "c",
            vec![],
            ContainerNetwork::Host,
            None,
            &root,
        )
        .unwrap();
        let namespaces = spec.linux().clone().unwrap().namespaces().clone().unwrap();
        assert!(namespaces
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Network));
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Pid));
    }

    #[test]
    fn container_ids_name_the_attempt() {
        let key = JobKey {
            batch_id: 1,
            job_id: 22,
            attempt_id: "Xq3".into(),
        };
        assert_eq!(container_id(&key), "bw-1-22-Xq3");
    }
}
