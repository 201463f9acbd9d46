//! This file is long (about 2,600 lines, 1,000 of them tests on real
//! namespaces) because the namespaces, their rules and the tests that
//! break them belong together.
//!
//! A network namespace per container job, as Hail's worker gives it
//! (issue 21): the host side. The runc executor joins its containers to
//! these (`--container-network namespace`, `container/network.rs`).
//!
//! # Namespaces
//!
//! A job gets a namespace of its [`NetworkKind`]: `public` (the internet,
//! but never the [`NetworkConfig::blocked`] CIDRs, e.g. the cloud metadata
//! server, nor the worker's API port) or `private` (everything the host
//! reaches, and the host's DNS). Namespace `i` of a kind is named
//! `<prefix>-public-<i>` / `<prefix>-private-<i>` (mounted at
//! `/run/netns/<name>`, as `ip netns add` makes it), and is joined to the
//! host by a veth pair: the host end `<prefix>h<p|v><i>` (`p` public,
//! `v` private; at most 15 characters, hence a prefix of at most 10), the
//! job end created inside the namespace as `eth0`. Like Hail, each
//! namespace has a /24 of its kind's range: the `i`-th /24 of the range,
//! host end `.10`, job end `.11` (172.21.3.10 and 172.21.3.11 for public
//! namespace 3 with the default range); inside, `lo` is up and the
//! default route goes via the host end. IPv6 is off on the host end: a
//! job's IPv6 reaches nothing (the rules below are IPv4's).
//!
//! Namespaces are pooled: [`Networks::open`] makes
//! [`NetworkConfig::pool_size`] of each kind, [`Networks::acquire`] takes
//! one (making a new one when the pool is empty), [`Networks::release`]
//! puts it back (deleting it when the pool is full). A released namespace
//! is reused as is: jobs run without `CAP_NET_ADMIN`, so its addresses and
//! routes are still the ones set here.
//!
//! # Rules
//!
//! Every rule lives in chains of this prefix's own (`P` below is the
//! prefix in upper case), each reached by exactly one jump inserted first
//! in its built-in chain; [`Networks::close`] deletes those jumps and
//! chains and nothing else. `iptables -w 60` (the xtables lock, as Hail
//! waits for it) runs every change; `ip` (iproute2) makes the namespaces.
//!
//! - `filter P-FORWARD` (from `FORWARD`): published ports' accepts (first,
//!   only from outside the job veths); then DROP veth to veth and job
//!   range to job range; ACCEPT established/related back to the jobs and
//!   established replies from them; DROP public jobs to each `blocked`
//!   CIDR; ACCEPT the rest from the jobs; DROP anything else to the jobs.
//! - `filter P-INPUT` (from `INPUT`): DROP public jobs to each `blocked`
//!   CIDR on the host itself, and to the host's `api_port` (TCP).
//! - `nat P-POSTROUTING` (from `POSTROUTING`): MASQUERADE each range's
//!   traffic leaving by any interface but the job veths.
//! - `nat P-PREROUTING` / `nat P-OUTPUT` (from `PREROUTING` / `OUTPUT`):
//!   a published port's DNAT, `--dst-type LOCAL --dport <host port>` to
//!   `<job ip>:<job port>`, commented with the namespace's name; the
//!   `OUTPUT` one serves the host's own requests to its non-loopback
//!   addresses (127.0.0.1 would need `route_localnet`, not set here).
//!
//! While [`Networks::open_keeping`] remakes the chains around jobs kept
//! running after a crash, a guard first in `FORWARD` and `INPUT` drops
//! everything from the job veths (commented `<prefix>-restarting`).
//!
//! Inside each namespace, `filter OUTPUT` repeats the essentials (its own
//! /24 accepted, then DROP to both job ranges and, public, to each
//! `blocked` CIDR): a reload of the host's firewall that flushes the
//! chains above leaves them, and the job cannot change them.
//!
//! A job cannot reach another job, even through that job's published
//! port. [`Networks::open`] sets `net.ipv4.ip_forward` to 1 and
//! [`Networks::close`] leaves it so (other services may need it).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::process::Command;

/// How long `iptables -w` waits for the xtables lock, in seconds (Hail's).
const IPTABLES_WAIT_SECS: &str = "60";

/// The longest prefix: the host veth `<prefix>h<p|v><index>` must fit in
/// Linux's 15-character interface names with a 3-digit index.
pub const MAX_PREFIX_LEN: usize = 10;

/// The most namespaces of one kind (3 digits in the veth's name).
pub const MAX_SLOTS: u32 = 1000;

/// Which network a job gets (the spec's `network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// The internet, but not the `blocked` CIDRs nor the worker's API port;
    /// public nameservers.
    Public,
    /// Everything the host reaches, with the host's DNS.
    Private,
}

impl NetworkKind {
    fn word(self) -> &'static str {
        match self {
            NetworkKind::Public => "public",
            NetworkKind::Private => "private",
        }
    }

    /// The letter in the host veth's name: `p` public, `v` private.
    fn letter(self) -> char {
        match self {
            NetworkKind::Public => 'p',
            NetworkKind::Private => 'v',
        }
    }

    fn slot(self) -> usize {
        match self {
            NetworkKind::Public => 0,
            NetworkKind::Private => 1,
        }
    }
}

/// What [`Networks::open`] builds. CIDRs are `(address, prefix length)`.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Public jobs' addresses, a /24 per namespace; default 172.21.0.0/16
    /// (Hail's). Prefix length 8 to 24, the address aligned to it.
    pub public_range: (Ipv4Addr, u8),
    /// Private jobs' addresses; default 172.20.0.0/16 (Hail's).
    pub private_range: (Ipv4Addr, u8),
    /// Namespaces kept ready per kind; default 4.
    pub pool_size: usize,
    /// Host ports for published ports, TCP; default 46572..=47571 (Hail
    /// starts at 46572).
    pub port_range: RangeInclusive<u16>,
    /// Public jobs' nameservers; default 8.8.8.8, 8.8.4.4.
    pub public_dns: Vec<Ipv4Addr>,
    /// CIDRs public jobs never reach, forwarded or on the host; default
    /// the metadata server 169.254.169.254/32; add the internal ones.
    pub blocked: Vec<(Ipv4Addr, u8)>,
    /// The worker's own API port: public jobs may not reach the host on it;
    /// never in `port_range`.
    pub api_port: Option<u16>,
    /// Name prefix of namespaces, veths and chains: 1 to 10 of `a-z0-9`,
    /// a letter first; default "bw".
    pub prefix: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            public_range: (Ipv4Addr::new(172, 21, 0, 0), 16),
            private_range: (Ipv4Addr::new(172, 20, 0, 0), 16),
            pool_size: 4,
            port_range: 46572..=47571,
            public_dns: vec![Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(8, 8, 4, 4)],
            blocked: vec![(Ipv4Addr::new(169, 254, 169, 254), 32)],
            api_port: None,
            prefix: "bw".to_string(),
        }
    }
}

/// A failure setting up or tearing down job networks.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A command (`ip`, `iptables`) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, words joined by spaces.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command could not be started (not installed, not permitted).
    #[error("could not run `{command}`: {source}; `ip` (iproute2) and `iptables` must be on PATH and the worker root")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// A field of [`NetworkConfig`] is unusable.
    #[error("network config `{field}`: {message}")]
    Config {
        /// The field's name.
        field: &'static str,
        /// What was expected.
        message: String,
    },
    /// [`Networks::release`] got a job network these networks did not give
    /// (or gave and took back already).
    #[error("`{netns_name}` is not a job network acquired from these networks")]
    NotAcquired {
        /// The namespace's name.
        netns_name: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// [`Networks::close`] has run.
    #[error("the job networks are closed")]
    Closed,
    /// Another live worker (process) holds this prefix's job networks.
    #[error("another worker holds the job networks of prefix `{prefix}` (its lock {path} is taken); one worker per host uses a prefix: stop it, or give this one --job-network-prefix and ranges of its own")]
    InUse {
        /// The prefix.
        prefix: String,
        /// The lock file.
        path: PathBuf,
    },
}

/// The job networks of one worker: a Clone-able handle on the pools, the
/// chains and the published ports of one prefix.
#[derive(Clone)]
pub struct Networks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks")
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

/// One job's network namespace, from [`Networks::acquire`]; give it back
/// with [`Networks::release`]. Its JSON (serde) is what a worker keeps
/// while the job runs, to hand back to [`Networks::open_keeping`] after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobNetwork {
    /// Its kind.
    pub kind: NetworkKind,
    /// The namespace's name, e.g. `bw-public-3`.
    pub netns_name: String,
    /// `/run/netns/<name>`: the path runc's network namespace takes.
    pub netns_path: PathBuf,
    /// The host end's address: the job's gateway.
    pub host_ip: Ipv4Addr,
    /// The job's address (its `eth0`).
    pub job_ip: Ipv4Addr,
    /// The host end of the veth pair, e.g. `bwhp3`.
    pub host_veth: String,
    /// `(host port, job port)` when a port is published: TCP to any of the
    /// host's addresses on the host port reaches the job's port.
    pub published: Option<(u16, u16)>,
    /// The job's `/etc/resolv.conf`: public, a `nameserver` line per
    /// [`NetworkConfig::public_dns`]; private, the host's.
    pub resolv_conf: String,
    /// The job's `/etc/hosts`: the localhost lines, and for private jobs
    /// the host's `/etc/hosts` after them.
    pub hosts: String,
}

struct Inner {
    /// `/run/batch-worker-networks-<prefix>.lock`, held (flock) for the
    /// life of these networks: a second worker on the prefix is refused
    /// rather than removing the first's namespaces as leftovers.
    _lock: nix::fcntl::Flock<std::fs::File>,
    config: NetworkConfig,
    names: Names,
    /// Addresses per kind (`NetworkKind::slot`) and their slot counts.
    ranges: [(u32, u32); 2],
    host_resolv_conf: String,
    host_hosts: String,
    state: Mutex<State>,
    /// Notified whenever a host port or an address slot is given back (and
    /// at close): what a waiting [`Networks::acquire`] waits for.
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Ready namespaces' indices per kind.
    pools: [Vec<u32>; 2],
    /// Every index with a namespace (pooled, in use, being made) per kind.
    taken: [BTreeSet<u32>; 2],
    /// Host ports published (or being published).
    ports: BTreeSet<u16>,
    /// In-use namespaces by name: the veth counters when acquired.
    in_use: HashMap<String, (u64, u64)>,
}

/// What an [`Networks::acquire`] in flight holds. Dropped armed (the
/// acquire failed, or its caller gave up mid-way), it frees the host port
/// and the index, on a task that first removes the port's rules (those
/// made) and the namespace: a half-made network is never pooled.
struct Reserved {
    networks: Networks,
    kind: NetworkKind,
    index: u32,
    host_port: Option<u16>,
    rules: Vec<(&'static str, String, Vec<String>)>,
    armed: bool,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (networks, kind, index, host_port) =
            (self.networks.clone(), self.kind, self.index, self.host_port);
        let rules = std::mem::take(&mut self.rules);
        let free = move |networks: &Networks| {
            let mut state = networks.state();
            if let Some(port) = host_port {
                state.ports.remove(&port);
            }
            state.taken[kind.slot()].remove(&index);
            drop(state);
            networks.inner.freed.notify_waiters();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = unpublish(&rules).await;
                    let _ = networks.delete(kind, index).await;
                    free(&networks);
                });
            }
            // No runtime to remove them on: the index stays taken (never
            // reused half-made); `close` or the next start removes it.
            Err(_) => {
                if let Some(port) = host_port {
                    networks.state().ports.remove(&port);
                }
                networks.inner.freed.notify_waiters();
            }
        }
    }
}

/// The names a prefix gives.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    upper: String,
}

/// The chains: (table, built-in chain, suffix of ours).
const CHAINS: [(&str, &str); 5] = [
    ("filter", "FORWARD"),
    ("filter", "INPUT"),
    ("nat", "PREROUTING"),
    ("nat", "OUTPUT"),
    ("nat", "POSTROUTING"),
];

impl Names {
    fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            upper: prefix.to_ascii_uppercase(),
        }
    }

    /// Our chain hooked into `builtin`, e.g. `BW-FORWARD`.
    fn chain(&self, builtin: &str) -> String {
        format!("{}-{builtin}", self.upper)
    }

    fn netns(&self, kind: NetworkKind, index: u32) -> String {
        format!("{}-{}-{index}", self.prefix, kind.word())
    }

    fn host_veth(&self, kind: NetworkKind, index: u32) -> String {
        format!("{}h{}{index}", self.prefix, kind.letter())
    }

    /// Every job veth (an iptables interface wildcard).
    fn all_veths(&self) -> String {
        format!("{}h+", self.prefix)
    }

    /// Public job veths (an iptables interface wildcard).
    fn public_veths(&self) -> String {
        format!("{}hp+", self.prefix)
    }

    /// Is `name` a namespace of this prefix (`<prefix>-<kind>-<digits>`)?
    fn is_netns(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(&self.prefix) else {
            return false;
        };
        ["-public-", "-private-"].iter().any(|k| {
            rest.strip_prefix(k)
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
    }

    /// Is `name` a host veth of this prefix (`<prefix>h<p|v><digits>`)?
    fn is_host_veth(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(&self.prefix) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix('h') else {
            return false;
        };
        let Some(digits) = rest.strip_prefix(['p', 'v']) else {
            return false;
        };
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    }
}

fn cidr(net: (Ipv4Addr, u8)) -> String {
    format!("{}/{}", net.0, net.1)
}

/// The index of `job`'s namespace under `names` (`<prefix>-<kind>-<index>`).
fn index_in(names: &Names, job: &JobNetwork) -> Option<u32> {
    job.netns_name
        .strip_prefix(&format!("{}-{}-", names.prefix, job.kind.word()))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
}

/// The host and job addresses of namespace `index` of a range: the
/// `index`-th /24, `.10` and `.11`.
fn addresses(range_base: u32, index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let net = range_base + (index << 8);
    (Ipv4Addr::from(net + 10), Ipv4Addr::from(net + 11))
}

/// Checks a range: prefix length 8..=24, aligned; gives (base, slots).
fn check_range(field: &'static str, range: (Ipv4Addr, u8)) -> Result<(u32, u32), NetworkError> {
    let (addr, len) = range;
    if !(8..=24).contains(&len) {
        return Err(NetworkError::Config {
            field,
            message: format!(
                "{}: expected a prefix length from 8 to 24 (a /24 per namespace), e.g. 172.21.0.0/16",
                cidr(range)
            ),
        });
    }
    let base = u32::from(addr);
    let mask = u32::MAX << (32 - u32::from(len));
    if base & !mask != 0 {
        return Err(NetworkError::Config {
            field,
            message: format!(
                "{}: the address has host bits set; did you mean {}/{len}?",
                cidr(range),
                Ipv4Addr::from(base & mask)
            ),
        });
    }
    Ok((base, (1u32 << (24 - u32::from(len))).min(MAX_SLOTS)))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

fn check_config(config: &NetworkConfig) -> Result<[(u32, u32); 2], NetworkError> {
    let p = &config.prefix;
    if p.is_empty()
        || p.len() > MAX_PREFIX_LEN
        || !p.starts_with(|c: char| c.is_ascii_lowercase())
        || !p
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(NetworkError::Config {
            field: "prefix",
            message: format!(
                "{p:?}: expected 1 to {MAX_PREFIX_LEN} of a-z and 0-9, a letter first, e.g. \"bw\" (it names veths, at most 15 characters)"
            ),
        });
    }
    let public = check_range("public_range", config.public_range)?;
    let private = check_range("private_range", config.private_range)?;
    if overlaps(config.public_range, config.private_range) {
        return Err(NetworkError::Config {
            field: "private_range",
            message: format!(
                "{} overlaps public_range {}: the two must be disjoint",
                cidr(config.private_range),
                cidr(config.public_range)
            ),
        });
    }
    for &b in &config.blocked {
        if b.1 > 32 {
            return Err(NetworkError::Config {
                field: "blocked",
                message: format!("{}: a prefix length is at most 32", cidr(b)),
            });
        }
    }
    if config.port_range.is_empty() {
        return Err(NetworkError::Config {
            field: "port_range",
            message: format!(
                "{}..={} is empty: expected first <= last",
                config.port_range.start(),
                config.port_range.end()
            ),
        });
    }
    if let Some(api) = config.api_port.filter(|p| config.port_range.contains(p)) {
        // A job published there would take every request to the API (the
        // DNAT comes before the worker's socket).
        return Err(NetworkError::Config {
            field: "port_range",
            message: format!(
                "{}-{} (`--job-port-range`) holds the worker's API port {api} (`--listen`): a job's published port there would take the API's requests; choose a range without it",
                config.port_range.start(),
                config.port_range.end()
            ),
        });
    }
    for (field, (_, slots)) in [("public_range", public), ("private_range", private)] {
        if config.pool_size > slots as usize {
            return Err(NetworkError::Config {
                field: "pool_size",
                message: format!(
                    "{} namespaces do not fit {field}, which holds {slots}",
                    config.pool_size
                ),
            });
        }
    }
    Ok([public, private])
}

/// Whether this process can make job networks: it runs as root and finds
/// `ip` and `iptables` on `PATH`.
pub fn can_make_networks() -> bool {
    nix::unistd::geteuid().is_root()
        && which::which("ip").is_ok()
        && which::which("iptables").is_ok()
}

/// Checks `config` as [`Networks::open`] does, without changing anything.
///
/// # Errors
/// [`NetworkError::Config`] naming the unusable field.
pub fn check(config: &NetworkConfig) -> Result<(), NetworkError> {
    check_config(config).map(|_| ())
}

/// Runs `program args`; its stdout, or a typed error naming the command
/// and its stderr.
async fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    run_with_input(program, args, None).await
}

/// [`run`], with `input` on the command's standard input when Some.
async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<String, NetworkError> {
    let command = || format!("{program} {}", args.join(" "));
    let spawn_error = |source| NetworkError::Spawn {
        command: command(),
        source,
    };
    // A caller giving up mid-way (a dropped `acquire`) ends the command
    // too, before what it made is removed.
    let mut child = Command::new(program)
        .args(args)
        .stdin(match input {
            Some(_) => std::process::Stdio::piped(),
            None => std::process::Stdio::null(),
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        tokio::io::AsyncWriteExt::write_all(&mut stdin, input)
            .await
            .map_err(spawn_error)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_error)?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            command: command(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn ip(args: &[&str]) -> Result<String, NetworkError> {
    run("ip", args).await
}

/// `iptables -w 60 -t <table> <args>`.
async fn iptables(table: &str, args: &[&str]) -> Result<String, NetworkError> {
    let mut all = vec!["-w", IPTABLES_WAIT_SECS, "-t", table];
    all.extend_from_slice(args);
    run("iptables", &all).await
}

/// Deletes every namespace, host veth, chain and jump of this prefix, but
/// the namespaces (and their host veths) named in `keep`.
async fn remove_prefix(names: &Names, keep: &[JobNetwork]) -> Result<(), NetworkError> {
    let kept_netns = |name: &str| keep.iter().any(|k| k.netns_name == name);
    let kept_veth = |name: &str| keep.iter().any(|k| k.host_veth == name);
    // Host veths first (deleting one end deletes both), so a namespace a
    // lingering process keeps alive does not keep its veth.
    let links = ip(&["-o", "link", "show"]).await?;
    for line in links.lines() {
        // "12: bwhp0@if2: <BROADCAST,...".
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if names.is_host_veth(name) && !kept_veth(name) {
            ignore_missing(ip(&["link", "delete", name]).await)?;
        }
    }
    let netns = ip(&["netns", "list"]).await?;
    for line in netns.lines() {
        // "bw-public-0 (id: 3)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if names.is_netns(name) && !kept_netns(name) {
            ignore_missing(ip(&["netns", "delete", name]).await)?;
        }
    }
    for (table, builtin) in CHAINS {
        let chain = names.chain(builtin);
        let rules = iptables(table, &["-S"]).await?;
        let jump = format!("-A {builtin} -j {chain}");
        for _ in rules.lines().filter(|l| *l == jump) {
            iptables(table, &["-D", builtin, "-j", &chain]).await?;
        }
        let new = format!("-N {chain}");
        if rules.lines().any(|l| l == new) {
            // A rule of someone else's jumping here keeps the chain: say
            // which, before touching the chain's rules.
            let target = format!("-j {chain}");
            if let Some(foreign) = rules
                .lines()
                .find(|l| l.starts_with("-A ") && l.ends_with(&target) && *l != jump)
            {
                return Err(NetworkError::Config {
                    field: "prefix",
                    message: format!(
                        "chain {chain} (table {table}) is this prefix's, but a rule not made by the worker jumps to it: `{foreign}`; delete that rule or choose another `--job-network-prefix`"
                    ),
                });
            }
            iptables(table, &["-F", &chain]).await?;
            iptables(table, &["-X", &chain]).await?;
        }
    }
    Ok(())
}

/// Takes the prefix's lock (see [`Inner`]), without waiting.
fn lock_prefix(prefix: &str) -> Result<nix::fcntl::Flock<std::fs::File>, NetworkError> {
    let path = PathBuf::from(format!("/run/batch-worker-networks-{prefix}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| NetworkError::Io {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => NetworkError::InUse {
                prefix: prefix.to_owned(),
                path: path.clone(),
            },
            other => NetworkError::Io {
                path: path.clone(),
                source: other.into(),
            },
        },
    )
}

/// A deletion's result, with "it is gone already" as success.
fn ignore_missing(result: Result<String, NetworkError>) -> Result<(), NetworkError> {
    match result {
        Ok(_) => Ok(()),
        Err(NetworkError::Command { stderr, .. })
            if stderr.contains("Cannot find device")
                || stderr.contains("No such file")
                || stderr.contains("does not exist") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Refuses ranges that the host routes elsewhere already (a LAN, a VPN,
/// a container bridge): a namespace's /24 there would take the host's
/// traffic to those addresses, or never get its own. Routes on this
/// prefix's host veths (a crashed worker's) and the default route do not
/// count.
///
/// Errors: [`NetworkError::Config`] naming the range's field and the
/// route; a failing `ip`.
async fn check_routes(config: &NetworkConfig, names: &Names) -> Result<(), NetworkError> {
    let routes = ip(&["-4", "-o", "route", "show"]).await?;
    for line in routes.lines() {
        let mut words = line.split_whitespace().peekable();
        // "unreachable 10.0.0.0/8", "blackhole ...": the type first.
        if words.peek().is_some_and(|w| {
            ["unicast", "unreachable", "blackhole", "prohibit", "throw"].contains(w)
        }) {
            words.next();
        }
        let Some(destination) = words.next() else {
            continue;
        };
        let (address, len) = destination.split_once('/').unwrap_or((destination, "32"));
        let (Ok(address), Ok(len)) = (address.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
            continue; // "default"
        };
        let mut rest = line.split_whitespace();
        let device = rest.by_ref().skip_while(|w| *w != "dev").nth(1);
        if len == 0 || device.is_some_and(|d| names.is_host_veth(d)) {
            continue;
        }
        for (field, flag, range) in [
            ("public_range", "--job-network-public", config.public_range),
            (
                "private_range",
                "--job-network-private",
                config.private_range,
            ),
        ] {
            if overlaps(range, (address, len)) {
                return Err(NetworkError::Config {
                    field,
                    message: format!(
                        "{} (`{flag}`) overlaps the host's route `{}`: jobs' namespaces there would take the host's traffic to those addresses; choose a range the host does not route",
                        cidr(range),
                        line.trim()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The built-in chains a restart's guard is in: job traffic forwarded,
/// and to the host.
const GUARDED: [&str; 2] = ["FORWARD", "INPUT"];

/// The rule spec (after the chain) of the guard that drops everything
/// from the job veths while [`Networks::open_keeping`] rebuilds the chains
/// around jobs kept running: without it, a kept public job reaches the
/// blocked addresses and the API port until the chains are back.
fn guard_spec(names: &Names) -> Vec<String> {
    let comment = format!("{}-restarting", names.prefix);
    [
        "-i",
        &names.all_veths(),
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "DROP",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect()
}

/// Puts the restart's guard first in `FORWARD` and `INPUT` (once).
async fn insert_guard(names: &Names) -> Result<(), NetworkError> {
    let spec = guard_spec(names);
    for builtin in GUARDED {
        let mut check = vec!["-C", builtin];
        check.extend(spec.iter().map(String::as_str));
        if iptables("filter", &check).await.is_ok() {
            continue;
        }
        let mut insert = vec!["-I", builtin, "1"];
        insert.extend(spec.iter().map(String::as_str));
        iptables("filter", &insert).await?;
    }
    Ok(())
}

/// Deletes every copy of the restart's guard (one a crash mid-restart
/// left included).
async fn remove_guard(names: &Names) -> Result<(), NetworkError> {
    let spec = guard_spec(names);
    for builtin in GUARDED {
        let rules = iptables("filter", &["-S", builtin]).await?;
        let comment = format!("--comment {}-restarting", names.prefix);
        for _ in rules.lines().filter(|l| l.contains(&comment)) {
            let mut delete = vec!["-D", builtin];
            delete.extend(spec.iter().map(String::as_str));
            iptables("filter", &delete).await?;
        }
    }
    Ok(())
}

/// A rule deletion's result, with "no such rule" or "no such chain"
/// (`iptables -D` of iptables-nft and of iptables-legacy) as success.
fn ignore_missing_rule(result: Result<String, NetworkError>) -> Result<(), NetworkError> {
    match result {
        Ok(_) => Ok(()),
        Err(NetworkError::Command { stderr, .. })
            if stderr.contains("does a matching rule exist")
                || stderr.contains("No chain/target/match by that name") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The namespace's own `filter OUTPUT` rules (`-A` specs, made by one
/// `iptables-restore` in the namespace): its own /24
/// accepted, then DROP to both job ranges (other jobs) and, for public
/// jobs, to each `blocked` CIDR. They repeat the host's chains inside the
/// namespace, where a reload of the host's firewall (which flushes the
/// worker's chains) never reaches them and the job cannot change them (no
/// `CAP_NET_ADMIN`). `own` is the namespace's /24, e.g. `172.21.3.10/24`.
fn inner_rules(config: &NetworkConfig, kind: NetworkKind, own: &str) -> Vec<Vec<String>> {
    let words = |w: &[&str]| w.iter().map(|w| w.to_string()).collect::<Vec<String>>();
    let mut rules = vec![words(&["-A", "OUTPUT", "-d", own, "-j", "ACCEPT"])];
    for range in [config.public_range, config.private_range] {
        rules.push(words(&["-A", "OUTPUT", "-d", &cidr(range), "-j", "DROP"]));
    }
    if kind == NetworkKind::Public {
        for &b in &config.blocked {
            rules.push(words(&["-A", "OUTPUT", "-d", &cidr(b), "-j", "DROP"]));
        }
    }
    rules
}

/// Creates this prefix's chains, their fixed rules, and their jumps.
async fn install_chains(config: &NetworkConfig, names: &Names) -> Result<(), NetworkError> {
    let all = names.all_veths();
    let public = names.public_veths();
    let ranges = [cidr(config.public_range), cidr(config.private_range)];
    let forward = names.chain("FORWARD");
    let input = names.chain("INPUT");
    let postrouting = names.chain("POSTROUTING");

    for (table, builtin) in CHAINS {
        iptables(table, &["-N", &names.chain(builtin)]).await?;
    }

    let mut rules: Vec<(&str, Vec<String>)> = Vec::new();
    let mut rule = |table: &'static str, words: &[&str]| {
        rules.push((table, words.iter().map(|w| w.to_string()).collect()));
    };
    // Jobs never reach each other: by veth, and by address (job range to
    // job range).
    rule(
        "filter",
        &["-A", &forward, "-i", &all, "-o", &all, "-j", "DROP"],
    );
    for s in &ranges {
        for d in &ranges {
            rule("filter", &["-A", &forward, "-s", s, "-d", d, "-j", "DROP"]);
        }
    }
    rule(
        "filter",
        &[
            "-A",
            &forward,
            "-o",
            &all,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    );
    rule(
        "filter",
        &[
            "-A",
            &forward,
            "-i",
            &all,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    );
    let blocked: Vec<String> = config.blocked.iter().map(|&b| cidr(b)).collect();
    for b in &blocked {
        rule(
            "filter",
            &["-A", &forward, "-i", &public, "-d", b, "-j", "DROP"],
        );
    }
    rule("filter", &["-A", &forward, "-i", &all, "-j", "ACCEPT"]);
    rule("filter", &["-A", &forward, "-o", &all, "-j", "DROP"]);

    for b in &blocked {
        rule(
            "filter",
            &["-A", &input, "-i", &public, "-d", b, "-j", "DROP"],
        );
    }
    let api_port = config.api_port.map(|p| p.to_string());
    if let Some(port) = &api_port {
        rule(
            "filter",
            &[
                "-A", &input, "-i", &public, "-p", "tcp", "-m", "tcp", "--dport", port, "-j",
                "DROP",
            ],
        );
    }

    for s in &ranges {
        rule(
            "nat",
            &[
                "-A",
                &postrouting,
                "-s",
                s,
                "!",
                "-o",
                &all,
                "-j",
                "MASQUERADE",
            ],
        );
    }

    for (table, words) in &rules {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        iptables(table, &words).await?;
    }
    for (table, builtin) in CHAINS {
        iptables(table, &["-I", builtin, "1", "-j", &names.chain(builtin)]).await?;
    }
    Ok(())
}

/// The rules publishing `host_port` to `job_ip:job_port`: (table, chain,
/// rule spec without the chain), for `-A`/`-I` and `-D`.
fn port_rules(
    names: &Names,
    netns: &str,
    host_veth: &str,
    job_ip: Ipv4Addr,
    (host_port, job_port): (u16, u16),
) -> Vec<(&'static str, String, Vec<String>)> {
    let to = format!("{job_ip}:{job_port}");
    let hp = host_port.to_string();
    let jp = job_port.to_string();
    let job = format!("{job_ip}/32");
    let dnat: Vec<String> = [
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        &hp,
        "-m",
        "comment",
        "--comment",
        netns,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    let accept: Vec<String> = [
        "!",
        "-i",
        &names.all_veths(),
        "-o",
        host_veth,
        "-d",
        &job,
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        &jp,
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-m",
        "comment",
        "--comment",
        netns,
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    vec![
        ("filter", names.chain("FORWARD"), accept),
        ("nat", names.chain("PREROUTING"), dnat.clone()),
        ("nat", names.chain("OUTPUT"), dnat),
    ]
}

async fn publish(rules: &[(&'static str, String, Vec<String>)]) -> Result<(), NetworkError> {
    for (i, (table, chain, spec)) in rules.iter().enumerate() {
        let mut words: Vec<&str> = if *table == "filter" {
            // First in FORWARD: before the drops of traffic to the jobs.
            vec!["-I", chain, "1"]
        } else {
            vec!["-A", chain]
        };
        words.extend(spec.iter().map(String::as_str));
        if let Err(e) = iptables(table, &words).await {
            let _ = unpublish(&rules[..i]).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Deletes the rules; all are tried, the first failure is returned. A
/// rule (or chain) that is gone already counts as deleted: a firewall
/// reload that flushed a chain must not keep the host port taken for good.
async fn unpublish(rules: &[(&'static str, String, Vec<String>)]) -> Result<(), NetworkError> {
    let mut first = Ok(());
    for (table, chain, spec) in rules {
        let mut words: Vec<&str> = vec!["-D", chain];
        words.extend(spec.iter().map(String::as_str));
        if let Err(e) = ignore_missing_rule(iptables(table, &words).await) {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

fn read_counter(veth: &str, which: &str) -> std::io::Result<u64> {
    let path = format!("/sys/class/net/{veth}/statistics/{which}");
    let text = std::fs::read_to_string(&path)?;
    text.trim().parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{path}: {text:?} is not a byte count: {e}"),
        )
    })
}

/// The host veth's (tx, rx): the job's (received, sent).
fn veth_counters(veth: &str) -> std::io::Result<(u64, u64)> {
    Ok((
        read_counter(veth, "tx_bytes")?,
        read_counter(veth, "rx_bytes")?,
    ))
}

/// The host's resolver file for private jobs: `/etc/resolv.conf`, or
/// systemd-resolved's upstream list when that one names only the local
/// stub (127.0.0.53 is the job's own loopback inside its namespace).
fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    if !servers.is_empty() && servers.iter().all(|s| s.starts_with("127.")) {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    main
}

/// Turns IPv6 off on host veth `veth` (before it is up): the host then
/// drops every IPv6 packet the job sends. Left on, the veth's link-local
/// address (which a job works out from its gateway's MAC) would reach every
/// host service listening on `[::]`, a dual-stack API port included, past
/// the rules, which are IPv4's. Jobs get no IPv6, as Hail's. A host without
/// IPv6 has nothing to turn off.
///
/// Errors: [`NetworkError::Io`] when the sysctl cannot be written.
fn disable_ipv6(veth: &str) -> Result<(), NetworkError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{veth}/disable_ipv6"));
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && !Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        Err(source) => Err(NetworkError::Io { path, source }),
    }
}

/// The TCP ports sockets of the host listen on (any address, IPv4 or 6),
/// from `/proc/net/tcp` and `/proc/net/tcp6` (an unreadable one counts as
/// none). A published port is never one of these: its DNAT would take
/// their connections. (Ports that are only some connection's local end are
/// not listed: a DNAT takes only new connections.)
fn host_listening_ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        // "  sl  local_address rem_address   st ...": "0100007F:1F90 ... 0A".
        for line in text.lines().skip(1) {
            let mut words = line.split_whitespace();
            let local = words.nth(1);
            let listening = words.nth(1) == Some("0A");
            let port = local
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (true, Some(port)) = (listening, port) {
                ports.insert(port);
            }
        }
    }
    ports
}

const LOCALHOST_LINES: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

impl Networks {
    /// Removes leftovers of this prefix (namespaces, veths, chains, jumps:
    /// from a crash), sets `net.ipv4.ip_forward` to 1, installs the
    /// chains, and makes `pool_size` namespaces of each kind. Same as
    /// [`Networks::open_keeping`] with nothing to keep.
    ///
    /// Errors: [`NetworkError::Config`] for an unusable config (before any
    /// change), else the first failing command; what it made is removed.
    pub async fn open(config: NetworkConfig) -> Result<Networks, NetworkError> {
        Ok(Networks::open_keeping(config, Vec::new()).await?.0)
    }

    /// [`Networks::open`], keeping the job networks of `keep` (those of
    /// jobs that outlived a worker restart, from the JSON the worker
    /// kept): each one whose namespace and host veth still exist, with
    /// the names and addresses this config gives its index, stays as it
    /// is, in use (give it back with [`Networks::release`]); its published
    /// port is published again. The rest of `keep` is returned, not kept
    /// (its namespace, if any, is removed with the other leftovers).
    ///
    /// Errors: as [`Networks::open`].
    pub async fn open_keeping(
        config: NetworkConfig,
        keep: Vec<JobNetwork>,
    ) -> Result<(Networks, Vec<JobNetwork>), NetworkError> {
        let ranges = check_config(&config)?;
        let names = Names::new(&config.prefix);
        let (kept, lost): (Vec<JobNetwork>, Vec<JobNetwork>) = keep.into_iter().partition(|job| {
            let index = index_in(&names, job);
            index.is_some_and(|index| {
                let (host_ip, job_ip) = addresses(ranges[job.kind.slot()].0, index);
                index < ranges[job.kind.slot()].1
                    && job.host_ip == host_ip
                    && job.job_ip == job_ip
                    && job.host_veth == names.host_veth(job.kind, index)
                    && job.netns_path == Path::new("/run/netns").join(&job.netns_name)
                    && job.netns_path.exists()
                    && Path::new("/sys/class/net").join(&job.host_veth).exists()
                    && job
                        .published
                        .is_none_or(|(host_port, _)| config.port_range.contains(&host_port))
            })
        });
        // Two records of one namespace or one host port: keep the first.
        let mut kept_unique: Vec<JobNetwork> = Vec::new();
        let mut lost = lost;
        for job in kept {
            let clash = kept_unique.iter().any(|k| {
                k.netns_name == job.netns_name
                    || (k.published.is_some()
                        && k.published.map(|p| p.0) == job.published.map(|p| p.0))
            });
            if clash {
                lost.push(job);
            } else {
                kept_unique.push(job);
            }
        }
        let kept = kept_unique;
        let lock = lock_prefix(&config.prefix)?;
        check_routes(&config, &names).await?;
        // The kept jobs run on while their rules are remade: all their
        // traffic is dropped meanwhile (a few hundred ms).
        insert_guard(&names).await?;
        if let Err(e) = remove_prefix(&names, &kept).await {
            let _ = remove_guard(&names).await;
            return Err(e);
        }
        let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
        if let Err(source) = std::fs::write(forward, "1") {
            let _ = remove_guard(&names).await;
            return Err(NetworkError::Io {
                path: forward.to_path_buf(),
                source,
            });
        }
        let networks = Networks {
            inner: Arc::new(Inner {
                _lock: lock,
                names: names.clone(),
                ranges,
                host_resolv_conf: host_resolv_conf(),
                host_hosts: std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
                state: Mutex::new(State::default()),
                freed: tokio::sync::Notify::new(),
                config,
            }),
        };
        {
            let mut state = networks.state();
            for job in &kept {
                let index = index_in(&names, job).expect("checked above");
                state.taken[job.kind.slot()].insert(index);
                if let Some((host_port, _)) = job.published {
                    state.ports.insert(host_port);
                }
                let base = veth_counters(&job.host_veth).unwrap_or((0, 0));
                state.in_use.insert(job.netns_name.clone(), base);
            }
        }
        let pool_size = networks.inner.config.pool_size;
        let handle = &networks;
        let filled = async {
            install_chains(&handle.inner.config, &names).await?;
            for job in &kept {
                // Made by an older worker, maybe with IPv6 on.
                disable_ipv6(&job.host_veth)?;
                if let Some(pair) = job.published {
                    let rules =
                        port_rules(&names, &job.netns_name, &job.host_veth, job.job_ip, pair);
                    publish(&rules).await?;
                }
            }
            // The chains are whole again.
            remove_guard(&names).await?;
            let mut made = Vec::new();
            for kind in [NetworkKind::Public, NetworkKind::Private] {
                let slots = handle.range(kind).1;
                let free: Vec<u32> = {
                    let mut state = handle.state();
                    let taken = &mut state.taken[kind.slot()];
                    let free: Vec<u32> = (0..slots)
                        .filter(|i| !taken.contains(i))
                        .take(pool_size)
                        .collect();
                    taken.extend(free.iter().copied());
                    free
                };
                for index in free {
                    made.push(
                        async move { handle.create(kind, index).await.map(|()| (kind, index)) },
                    );
                }
            }
            futures::future::try_join_all(made).await
        };
        match filled.await {
            Err(e) => {
                let _ = remove_prefix(&names, &[]).await;
                let _ = remove_guard(&names).await;
                Err(e)
            }
            Ok(made) => {
                let mut state = networks.state();
                for (kind, index) in made.into_iter().rev() {
                    state.pools[kind.slot()].push(index);
                }
                drop(state);
                Ok((networks, lost))
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; go on with it.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn range(&self, kind: NetworkKind) -> (u32, u32) {
        self.inner.ranges[kind.slot()]
    }

    /// Takes a host port (when `port`) and a namespace index of `kind`:
    /// `(pooled, index, host port)`, or `None` when either is exhausted
    /// (nothing taken then). A host port is one of `port_range` no job
    /// holds and not in `listening` (the host's listening TCP ports).
    fn reserve(
        &self,
        kind: NetworkKind,
        port: bool,
        listening: &BTreeSet<u16>,
    ) -> Result<Option<(bool, u32, Option<u16>)>, NetworkError> {
        let mut state = self.state();
        if state.closed {
            return Err(NetworkError::Closed);
        }
        let host_port = if port {
            let mut range = self.inner.config.port_range.clone();
            let free = range.find(|p| !state.ports.contains(p) && !listening.contains(p));
            match free {
                Some(free) => Some(free),
                None => return Ok(None),
            }
        } else {
            None
        };
        let (pooled, index) = match state.pools[kind.slot()].pop() {
            Some(index) => (true, index),
            None => {
                let slots = self.range(kind).1;
                let taken = &state.taken[kind.slot()];
                match (0..slots).find(|i| !taken.contains(i)) {
                    Some(index) => (false, index),
                    None => return Ok(None),
                }
            }
        };
        if !pooled {
            state.taken[kind.slot()].insert(index);
        }
        if let Some(p) = host_port {
            state.ports.insert(p);
        }
        Ok(Some((pooled, index, host_port)))
    }

    /// Makes namespace `index` of `kind` (its index already taken).
    async fn create(&self, kind: NetworkKind, index: u32) -> Result<(), NetworkError> {
        let names = &self.inner.names;
        let netns = names.netns(kind, index);
        let veth = names.host_veth(kind, index);
        let (host_ip, job_ip) = addresses(self.range(kind).0, index);
        let host_cidr = format!("{host_ip}/24");
        let job_cidr = format!("{job_ip}/24");
        let host_ip = host_ip.to_string();
        let made = async {
            ip(&["netns", "add", &netns]).await?;
            ip(&[
                "link", "add", "name", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ])
            .await?;
            disable_ipv6(&veth)?;
            ip(&["address", "add", &host_cidr, "dev", &veth]).await?;
            ip(&["link", "set", "dev", &veth, "up"]).await?;
            ip(&["-n", &netns, "address", "add", &job_cidr, "dev", "eth0"]).await?;
            ip(&["-n", &netns, "link", "set", "dev", "eth0", "up"]).await?;
            ip(&["-n", &netns, "link", "set", "dev", "lo", "up"]).await?;
            ip(&["-n", &netns, "route", "add", "default", "via", &host_ip]).await?;
            let mut restore = String::from("*filter\n");
            for rule in inner_rules(&self.inner.config, kind, &host_cidr) {
                restore.push_str(&rule.join(" "));
                restore.push('\n');
            }
            restore.push_str("COMMIT\n");
            let restore_args = [
                "netns",
                "exec",
                &netns,
                "iptables-restore",
                "-w",
                IPTABLES_WAIT_SECS,
            ];
            run_with_input("ip", &restore_args, Some(restore.as_bytes())).await?;
            Ok(())
        };
        let result = made.await;
        if result.is_err() {
            let _ = self.delete(kind, index).await;
        }
        result
    }

    /// Deletes namespace `index` of `kind` and its veth (either may be
    /// gone already).
    async fn delete(&self, kind: NetworkKind, index: u32) -> Result<(), NetworkError> {
        let names = &self.inner.names;
        let veth = ignore_missing(ip(&["link", "delete", &names.host_veth(kind, index)]).await);
        let netns = ignore_missing(ip(&["netns", "delete", &names.netns(kind, index)]).await);
        veth.and(netns)
    }

    /// A ready namespace of `kind` (from the pool; a new one when it is
    /// empty), with TCP `port` of the job published on a free host port of
    /// `port_range` when Some (the lowest one neither published nor
    /// listened on by a host socket).
    ///
    /// Cancel-safe: dropped before it returns, it removes what it made of a
    /// new namespace and its port's rules (on a task of the current
    /// runtime), and frees the host port and the address slot.
    ///
    /// Waits while every host port of `port_range` (when `port`) or every
    /// /24 of the kind's range is in use, as Hail's worker waits on its
    /// queues, until a [`Networks::release`] gives one back (the caller
    /// bounds the wait: the worker's spawn deadline, a cancel).
    ///
    /// Errors: [`NetworkError::Closed`], or a failing command.
    pub async fn acquire(
        &self,
        kind: NetworkKind,
        port: Option<u16>,
    ) -> Result<JobNetwork, NetworkError> {
        // As Hail's queues of namespaces and ports: when every host port
        // (or every address slot) is taken, wait for one to be given back.
        let (pooled, index, host_port) = loop {
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Not a port a host service listens on: the job's DNAT would
            // take its connections.
            let listening = port.map(|_| host_listening_ports()).unwrap_or_default();
            match self.reserve(kind, port.is_some(), &listening)? {
                Some(reserved) => break reserved,
                None => {
                    tracing::info!(
                        kind = kind.word(),
                        port = port.is_some(),
                        "every host port of --job-port-range (or every /24 of the job range) is in use: waiting for one to be given back; widen the range if this is common"
                    );
                    // Also looked at again each second: a host port some
                    // other program held may be free by now.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), freed).await;
                }
            }
        };
        // From here until the end, a failure or the caller giving up
        // (this future dropped) gives the index and the host port back.
        let mut reserved = Reserved {
            networks: self.clone(),
            kind,
            index,
            host_port,
            rules: Vec::new(),
            armed: true,
        };
        if !pooled {
            self.create(kind, index).await?;
        }
        let names = &self.inner.names;
        let netns_name = names.netns(kind, index);
        let host_veth = names.host_veth(kind, index);
        let (host_ip, job_ip) = addresses(self.range(kind).0, index);
        let published = host_port.zip(port);
        if let Some(pair) = published {
            reserved.rules = port_rules(names, &netns_name, &host_veth, job_ip, pair);
            publish(&reserved.rules).await?;
        }
        reserved.armed = false;
        let base = veth_counters(&host_veth).unwrap_or((0, 0));
        let closed = {
            let mut state = self.state();
            if !state.closed {
                state.in_use.insert(netns_name.clone(), base);
            }
            state.closed
        };
        if closed {
            // `close` ran meanwhile and may have missed what this made.
            let _ = self.delete(kind, index).await;
            return Err(NetworkError::Closed);
        }
        let config = &self.inner.config;
        let (resolv_conf, hosts) = match kind {
            NetworkKind::Public => (
                config
                    .public_dns
                    .iter()
                    .map(|d| format!("nameserver {d}\n"))
                    .collect(),
                LOCALHOST_LINES.to_string(),
            ),
            NetworkKind::Private => (
                self.inner.host_resolv_conf.clone(),
                format!("{LOCALHOST_LINES}{}", self.inner.host_hosts),
            ),
        };
        Ok(JobNetwork {
            kind,
            netns_path: Path::new("/run/netns").join(&netns_name),
            netns_name,
            host_ip,
            job_ip,
            host_veth,
            published,
            resolv_conf,
            hosts,
        })
    }

    /// Removes the job's published port (its host port is free again) and
    /// returns the namespace to the pool, or deletes it when the pool is
    /// full or the networks are closed.
    ///
    /// Errors: [`NetworkError::NotAcquired`], or a failing command (when
    /// the port's rules cannot be removed the host port and the address
    /// slot stay taken and the namespace is deleted rather than pooled).
    pub async fn release(&self, job: JobNetwork) -> Result<(), NetworkError> {
        let index = self.index_of(&job)?;
        let kind = job.kind;
        let mut result = Ok(());
        if let Some(pair) = job.published {
            let rules = port_rules(
                &self.inner.names,
                &job.netns_name,
                &job.host_veth,
                job.job_ip,
                pair,
            );
            result = unpublish(&rules).await;
            if result.is_ok() {
                self.state().ports.remove(&pair.0);
            }
        }
        let pool = {
            let mut state = self.state();
            let pool = result.is_ok()
                && !state.closed
                && state.pools[kind.slot()].len() < self.inner.config.pool_size;
            if pool {
                state.pools[kind.slot()].push(index);
            }
            pool
        };
        if !pool {
            let deleted = self.delete(kind, index).await;
            // A port whose rules could not be removed keeps its slot taken
            // too: a new namespace at the same address would inherit the
            // stale DNAT. Both come back at the next start.
            if result.is_ok() {
                self.state().taken[kind.slot()].remove(&index);
            }
            result = result.and(deleted);
        }
        self.inner.freed.notify_waiters();
        result
    }

    /// The index of an acquired job network, taking it out of `in_use`.
    fn index_of(&self, job: &JobNetwork) -> Result<u32, NetworkError> {
        let not = || NetworkError::NotAcquired {
            netns_name: job.netns_name.clone(),
        };
        let index = index_in(&self.inner.names, job).ok_or_else(not)?;
        self.state()
            .in_use
            .remove(&job.netns_name)
            .map(|_| index)
            .ok_or_else(not)
    }

    /// Bytes (received, sent) by the job since [`Networks::acquire`], from
    /// `/sys/class/net/<host veth>/statistics` (the host end's `tx_bytes`
    /// is what the job received, its `rx_bytes` what the job sent).
    pub fn counters(&self, job: &JobNetwork) -> std::io::Result<(u64, u64)> {
        let (rx, tx) = veth_counters(&job.host_veth)?;
        let base = self
            .state()
            .in_use
            .get(&job.netns_name)
            .copied()
            .unwrap_or((0, 0));
        Ok((rx.saturating_sub(base.0), tx.saturating_sub(base.1)))
    }

    /// Deletes every namespace, veth, chain and jump of this prefix (exact:
    /// only its own chains and the jumps into them), in use or pooled;
    /// later `acquire` calls fail with [`NetworkError::Closed`].
    pub async fn close(&self) -> Result<(), NetworkError> {
        {
            let mut state = self.state();
            state.closed = true;
            state.pools = Default::default();
            state.taken = Default::default();
            state.ports.clear();
            state.in_use.clear();
        }
        self.inner.freed.notify_waiters();
        remove_prefix(&self.inner.names, &[]).await?;
        remove_guard(&self.inner.names).await
    }
}

#[cfg(test)]
mod tests {
    //! Real namespaces and rules: each test has its own prefix (`nt<n>`),
    //! ranges, host ports and "outside host" (a namespace of its own joined
    //! to the host by a veth, 10.213.<n>.0/24), so they run in parallel and
    //! never reach beyond this machine.

    use super::*;
    use std::time::{Duration, Instant};

    /// Test `n`'s config: ranges 10.(100+2n).0.0/16 and 10.(101+2n).0.0/16,
    /// host ports 40000+100n..=40000+100n+9, one namespace per pool.
    fn config(n: u8) -> NetworkConfig {
        let base = 40000 + 100 * u16::from(n);
        NetworkConfig {
            public_range: (Ipv4Addr::new(10, 100 + 2 * n, 0, 0), 16),
            private_range: (Ipv4Addr::new(10, 101 + 2 * n, 0, 0), 16),
            pool_size: 1,
            port_range: base..=base + 9,
            public_dns: vec![Ipv4Addr::new(8, 8, 8, 8)],
            blocked: vec![],
            api_port: None,
            prefix: format!("nt{n}"),
        }
    }

    /// Closes the networks and removes the outside host when dropped, even
    /// when the test fails.
    struct Guard {
        networks: Option<Networks>,
        outside: Option<(String, String)>,
        children: Vec<tokio::process::Child>,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.start_kill();
            }
            let networks = self.networks.take();
            let outside = self.outside.take();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the cleanup");
                rt.block_on(async {
                    if let Some(networks) = networks {
                        networks.close().await.expect("close");
                    }
                    if let Some((netns, veth)) = outside {
                        let _ = ip(&["link", "delete", &veth]).await;
                        let _ = ip(&["netns", "delete", &netns]).await;
                    }
                });
            })
            .join()
            .expect("the cleanup thread");
        }
    }

    impl Guard {
        fn new(networks: &Networks) -> Guard {
            Guard {
                networks: Some(networks.clone()),
                outside: None,
                children: Vec::new(),
            }
        }
    }

    /// The test's outside host: namespace `nt<n>-outside`, 10.213.n.2 and
    /// 10.213.n.254 (a stand-in metadata address) on its end, 10.213.n.1 on
    /// the host's, and 10.215.n.2 (a stand-in internal network, routed via
    /// it); an HTTP server on port 8080 of all of them serving `hello.txt`.
    struct Outside {
        netns: String,
        host: Ipv4Addr,
    }

    async fn outside(n: u8, guard: &mut Guard, dir: &Path) -> Outside {
        let netns = format!("nt{n}-outside");
        let veth = format!("nt{n}o");
        let _ = ip(&["link", "delete", &veth]).await;
        let _ = ip(&["netns", "delete", &netns]).await;
        guard.outside = Some((netns.clone(), veth.clone()));
        let a = |last: u8| format!("10.213.{n}.{last}");
        let cmds: Vec<Vec<String>> = [
            vec!["netns", "add", &netns],
            vec![
                "link", "add", "name", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ],
            vec!["address", "add", &format!("{}/24", a(1)), "dev", &veth],
            vec!["link", "set", &veth, "up"],
            vec![
                "-n",
                &netns,
                "address",
                "add",
                &format!("{}/24", a(2)),
                "dev",
                "eth0",
            ],
            vec![
                "-n",
                &netns,
                "address",
                "add",
                &format!("{}/32", a(254)),
                "dev",
                "eth0",
            ],
            vec![
                "-n",
                &netns,
                "address",
                "add",
                &format!("10.215.{n}.2/24"),
                "dev",
                "eth0",
            ],
            vec!["-n", &netns, "link", "set", "eth0", "up"],
            vec!["-n", &netns, "link", "set", "lo", "up"],
            vec!["-n", &netns, "route", "add", "default", "via", &a(1)],
            vec!["route", "add", &format!("10.215.{n}.0/24"), "via", &a(2)],
        ]
        .iter()
        .map(|c| c.iter().map(|w| w.to_string()).collect())
        .collect();
        for c in cmds {
            let c: Vec<&str> = c.iter().map(String::as_str).collect();
            ip(&c).await.expect("the outside host");
        }
        std::fs::write(dir.join("hello.txt"), format!("hello from outside {n}\n")).unwrap();
        serve(
            guard,
            &netns,
            8080,
            dir,
            format!("10.213.{n}.2").parse().unwrap(),
        )
        .await;
        Outside {
            netns,
            host: a(1).parse().unwrap(),
        }
    }

    /// Runs `python3 -m http.server port` in `netns` serving `dir`, and
    /// waits (5 s at most) until `addr:port` takes connections from here.
    async fn serve(guard: &mut Guard, netns: &str, port: u16, dir: &Path, addr: Ipv4Addr) {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-m", "http.server"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 -m http.server");
        guard.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let connect = tokio::net::TcpStream::connect((addr, port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no server on {addr}:{port} in {netns} after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `curl` (3 s at most) of `url` from `netns`: the body, or curl's error.
    async fn fetch(netns: &str, url: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "curl", "-sS", "-m", "3", url])
            .output()
            .await
            .expect("curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// What of `prefix` is left: namespaces, veths, iptables lines.
    async fn leftovers(prefix: &str) -> Vec<String> {
        let names = Names::new(prefix);
        let mut left = Vec::new();
        for line in ip(&["netns", "list"]).await.unwrap().lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&format!("{prefix}-")) && name != format!("{prefix}-outside") {
                left.push(format!("netns {name}"));
            }
        }
        for line in ip(&["-o", "link", "show"]).await.unwrap().lines() {
            if let Some(name) = line.split(": ").nth(1) {
                if names.is_host_veth(name.split('@').next().unwrap()) {
                    left.push(format!("link {name}"));
                }
            }
        }
        let save = run("iptables-save", &[]).await.unwrap();
        for line in save.lines() {
            if line.contains(&format!("{}-", names.upper)) || line.contains(&format!("{prefix}-")) {
                left.push(format!("iptables {line}"));
            }
        }
        left
    }

    async fn close_and_check(networks: &Networks) {
        networks.close().await.unwrap();
        let left = leftovers(&networks.inner.names.prefix).await;
        assert!(left.is_empty(), "left after close: {left:#?}");
    }

    /// Whether this process may make namespaces and rules (root, with `ip`
    /// and `iptables`); without, the test skips, saying so, unless
    /// `BW_REQUIRE_NETWORK` is set (CI), where it fails.
    fn can_make_networks() -> bool {
        if super::can_make_networks() {
            return true;
        }
        assert!(
            std::env::var_os("BW_REQUIRE_NETWORK").is_none(),
            "BW_REQUIRE_NETWORK is set but this process is not root with ip and iptables"
        );
        eprintln!("skipped: network namespace tests need root, ip and iptables");
        false
    }

    #[tokio::test]
    async fn a_public_job_fetches_from_the_outside_host() {
        if !can_make_networks() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let networks = Networks::open(config(1)).await.unwrap();
        let mut guard = Guard::new(&networks);
        let out = outside(1, &mut guard, dir.path()).await;
        let job = networks.acquire(NetworkKind::Public, None).await.unwrap();
        assert_eq!(job.netns_name, "nt1-public-0");
        assert_eq!(job.netns_path, Path::new("/run/netns/nt1-public-0"));
        assert_eq!(job.host_veth, "nt1hp0");
        assert_eq!(job.host_ip, Ipv4Addr::new(10, 102, 0, 10));
        assert_eq!(job.job_ip, Ipv4Addr::new(10, 102, 0, 11));
        assert_eq!(job.resolv_conf, "nameserver 8.8.8.8\n");
        assert!(job.hosts.starts_with("127.0.0.1\tlocalhost\n"));
        let body = fetch(&job.netns_name, "http://10.213.1.2:8080/hello.txt").await;
        assert_eq!(body.as_deref(), Ok("hello from outside 1\n"));
        let (received, sent) = networks.counters(&job).unwrap();
        assert!(received > 21 && sent > 0, "counters {received} {sent}");
        networks.release(job).await.unwrap();
        // Back from the pool, the counters start again.
        let job = networks.acquire(NetworkKind::Public, None).await.unwrap();
        assert_eq!(job.netns_name, "nt1-public-0");
        assert_eq!(networks.counters(&job).unwrap(), (0, 0));
        let _ = out;
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn public_jobs_reach_neither_blocked_addresses_nor_the_api_port_private_jobs_do() {
        if !can_make_networks() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let api = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let api_port = api.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = api.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\napi\n").await;
            }
        });
        let mut config = config(2);
        config.blocked = vec![
            (Ipv4Addr::new(10, 213, 2, 254), 32),
            (Ipv4Addr::new(10, 215, 2, 0), 24),
        ];
        config.api_port = Some(api_port);
        let networks = Networks::open(config).await.unwrap();
        let mut guard = Guard::new(&networks);
        let _out = outside(2, &mut guard, dir.path()).await;
        let public = networks.acquire(NetworkKind::Public, None).await.unwrap();
        let private = networks.acquire(NetworkKind::Private, None).await.unwrap();
        assert_eq!(private.host_veth, "nt2hv0");
        assert_eq!(private.job_ip, Ipv4Addr::new(10, 105, 0, 11));
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap();
        assert!(private.hosts.ends_with(&hosts));
        let hello = Ok("hello from outside 2\n".to_string());
        let api_url = |job: &JobNetwork| format!("http://{}:{api_port}/", job.host_ip);
        for url in [
            "http://10.213.2.2:8080/hello.txt",
            "http://10.213.2.254:8080/hello.txt",
            "http://10.215.2.2:8080/hello.txt",
        ] {
            assert_eq!(
                fetch(&private.netns_name, url).await,
                hello,
                "private to {url}"
            );
        }
        assert_eq!(
            fetch(&private.netns_name, &api_url(&private)).await,
            Ok("api\n".to_string())
        );
        assert_eq!(
            fetch(&public.netns_name, "http://10.213.2.2:8080/hello.txt").await,
            hello
        );
        for url in [
            "http://10.213.2.254:8080/hello.txt".to_string(),
            "http://10.215.2.2:8080/hello.txt".to_string(),
            api_url(&public),
        ] {
            let got = fetch(&public.netns_name, &url).await;
            assert!(got.is_err(), "public reached {url}: {got:?}");
        }
        networks.release(public).await.unwrap();
        networks.release(private).await.unwrap();
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn a_published_port_answers_external_traffic_until_released() {
        if !can_make_networks() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let job_dir = tempfile::tempdir().unwrap();
        std::fs::write(job_dir.path().join("hello.txt"), "hello from the job\n").unwrap();
        let mut config = config(3);
        config.port_range = 40300..=40301;
        let networks = Networks::open(config).await.unwrap();
        let mut guard = Guard::new(&networks);
        let out = outside(3, &mut guard, dir.path()).await;
        let job = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        let (host_port, job_port) = job.published.unwrap();
        assert_eq!((host_port, job_port), (40300, 8000));
        serve(
            &mut guard,
            &job.netns_name,
            8000,
            job_dir.path(),
            job.job_ip,
        )
        .await;
        let url = format!("http://{}:{host_port}/hello.txt", out.host);
        let hello = Ok("hello from the job\n".to_string());
        assert_eq!(
            fetch(&out.netns, &url).await,
            hello,
            "from the outside host"
        );

        // Never two jobs on one host port; none left, the next waits for
        // one to be given back (as Hail's port queue).
        let other = networks
            .acquire(NetworkKind::Private, Some(9000))
            .await
            .unwrap();
        assert_eq!(other.published, Some((40301, 9000)));
        let waiting = tokio::spawn({
            let networks = networks.clone();
            async move { networks.acquire(NetworkKind::Public, Some(8001)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "no free port, yet it returned");
        networks.release(other).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the release")
            .unwrap()
            .unwrap();
        assert_eq!(third.published, Some((40301, 8001)));
        networks.release(third).await.unwrap();
        // A host port some program listens on is not given to a job; it is
        // once that program has gone (looked at again each second).
        let squatter = std::net::TcpListener::bind(("0.0.0.0", 40301)).unwrap();
        let waiting = tokio::spawn({
            let networks = networks.clone();
            async move { networks.acquire(NetworkKind::Private, Some(9000)).await }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !waiting.is_finished(),
            "given the port a program listens on"
        );
        drop(squatter);
        let later = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the port is seen free again")
            .unwrap()
            .unwrap();
        assert_eq!(later.published, Some((40301, 9000)));
        networks.release(later).await.unwrap();

        let netns = job.netns_name.clone();
        networks.release(job).await.unwrap();
        let left: Vec<String> = run("iptables-save", &[])
            .await
            .unwrap()
            .lines()
            .filter(|l| l.contains(&netns))
            .map(str::to_string)
            .collect();
        assert!(left.is_empty(), "rules of {netns} left: {left:?}");
        assert!(
            fetch(&out.netns, &url).await.is_err(),
            "still published after release"
        );
        // The port is free again.
        let again = networks
            .acquire(NetworkKind::Public, Some(8001))
            .await
            .unwrap();
        assert_eq!(again.published, Some((40300, 8001)));
        networks.release(again).await.unwrap();
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn a_host_port_a_host_service_listens_on_is_never_published() {
        if !can_make_networks() {
            return;
        }
        let mut config = config(22);
        config.port_range = 42200..=42202;
        // A service of the host on the range's first port (dual stack).
        let service = tokio::net::TcpListener::bind("[::]:42200").await.unwrap();
        let networks = Networks::open(config).await.unwrap();
        let _guard = Guard::new(&networks);
        let job = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        assert_eq!(job.published, Some((42201, 8000)));
        drop(service);
        // Free again: the next job may have it.
        let next = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        assert_eq!(next.published, Some((42200, 8000)));
        networks.release(job).await.unwrap();
        networks.release(next).await.unwrap();
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn a_port_whose_rules_a_firewall_reload_flushed_is_freed_at_release() {
        if !can_make_networks() {
            return;
        }
        let mut config = config(24);
        config.port_range = 42400..=42400;
        let networks = Networks::open(config).await.unwrap();
        let _guard = Guard::new(&networks);
        let job = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        // Someone flushes one of our chains (a firewall reload).
        iptables("nat", &["-F", "NT24-PREROUTING"]).await.unwrap();
        networks.release(job).await.unwrap();
        assert_eq!(
            run("iptables-save", &[])
                .await
                .unwrap()
                .matches("nt24-public-0")
                .count(),
            0
        );
        // The one host port is free again.
        let next = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        assert_eq!(next.published, Some((42400, 8000)));
        networks.release(next).await.unwrap();
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn a_foreign_jump_into_a_chain_of_the_prefix_is_named_at_open() {
        if !can_make_networks() {
            return;
        }
        iptables("filter", &["-N", "NT25-INPUT"]).await.unwrap();
        iptables("filter", &["-A", "NT25-INPUT", "-j", "RETURN"])
            .await
            .unwrap();
        let foreign = ["INPUT", "-p", "tcp", "--dport", "1", "-j", "NT25-INPUT"];
        iptables("filter", &[&["-A"], &foreign[..]].concat())
            .await
            .unwrap();
        let opened = Networks::open(config(25)).await;
        let kept = iptables("filter", &["-S", "NT25-INPUT"]).await;
        iptables("filter", &[&["-D"], &foreign[..]].concat())
            .await
            .unwrap();
        let _ = iptables("filter", &["-F", "NT25-INPUT"]).await;
        let _ = iptables("filter", &["-X", "NT25-INPUT"]).await;
        match opened {
            Err(NetworkError::Config { field, message }) => {
                assert_eq!(field, "prefix");
                assert!(
                    message.contains("-A INPUT -p tcp -m tcp --dport 1 -j NT25-INPUT"),
                    "{message}"
                );
            }
            other => panic!("opened: {other:?}"),
        }
        // Its rules were left alone.
        assert!(kept.unwrap().contains("-A NT25-INPUT -j RETURN"));
        assert_eq!(leftovers("nt25").await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_host_firewall_reload_flushing_the_chains_still_keeps_public_jobs_in() {
        if !can_make_networks() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let job_dir = tempfile::tempdir().unwrap();
        std::fs::write(job_dir.path().join("hello.txt"), "hello from b\n").unwrap();
        let mut config = config(26);
        config.blocked = vec![(Ipv4Addr::new(10, 213, 26, 254), 32)];
        let networks = Networks::open(config).await.unwrap();
        let mut guard = Guard::new(&networks);
        let _out = outside(26, &mut guard, dir.path()).await;
        let a = networks.acquire(NetworkKind::Public, None).await.unwrap();
        let b = networks.acquire(NetworkKind::Private, None).await.unwrap();
        serve(&mut guard, &b.netns_name, 8000, job_dir.path(), b.job_ip).await;
        // A reload of the host's firewall empties the worker's chains.
        for chain in ["NT26-FORWARD", "NT26-INPUT"] {
            iptables("filter", &["-F", chain]).await.unwrap();
        }
        let hello = Ok("hello from outside 26\n".to_string());
        let web = "http://10.213.26.2:8080/hello.txt";
        assert_eq!(fetch(&a.netns_name, web).await, hello, "the internet");
        for url in [
            "http://10.213.26.254:8080/hello.txt".to_string(),
            format!("http://{}:8000/hello.txt", b.job_ip),
        ] {
            let got = fetch(&a.netns_name, &url).await;
            assert!(got.is_err(), "public reached {url}: {got:?}");
        }
        networks.release(a).await.unwrap();
        networks.release(b).await.unwrap();
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn a_range_the_host_routes_elsewhere_is_refused_at_open() {
        if !can_make_networks() {
            return;
        }
        // A LAN of the host inside the public range (10.154.0.0/16).
        let _ = ip(&["link", "delete", "nt27l0"]).await;
        ip(&[
            "link", "add", "nt27l0", "type", "veth", "peer", "name", "nt27l1",
        ])
        .await
        .unwrap();
        ip(&["address", "add", "10.154.3.2/24", "dev", "nt27l0"])
            .await
            .unwrap();
        ip(&["link", "set", "nt27l0", "up"]).await.unwrap();
        ip(&["link", "set", "nt27l1", "up"]).await.unwrap();
        let opened = Networks::open(config(27)).await;
        ip(&["link", "delete", "nt27l0"]).await.unwrap();
        match opened {
            Err(NetworkError::Config { field, message }) => {
                assert_eq!(field, "public_range");
                assert!(
                    message.contains("`--job-network-public`")
                        && message.contains("10.154.3.0/24 dev nt27l0"),
                    "{message}"
                );
            }
            other => panic!("opened: {other:?}"),
        }
        assert_eq!(leftovers("nt27").await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn jobs_cannot_reach_each_other() {
        if !can_make_networks() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let job_dir = tempfile::tempdir().unwrap();
        std::fs::write(job_dir.path().join("hello.txt"), "hello from b\n").unwrap();
        let networks = Networks::open(config(4)).await.unwrap();
        let mut guard = Guard::new(&networks);
        let out = outside(4, &mut guard, dir.path()).await;
        let a = networks.acquire(NetworkKind::Public, None).await.unwrap();
        let b = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        let c = networks.acquire(NetworkKind::Private, None).await.unwrap();
        assert_eq!(b.netns_name, "nt4-public-1", "made anew: the pool held one");
        serve(&mut guard, &b.netns_name, 8000, job_dir.path(), b.job_ip).await;
        let (host_port, _) = b.published.unwrap();
        let hello = Ok("hello from b\n".to_string());
        assert_eq!(
            fetch(
                &out.netns,
                &format!("http://{}:{host_port}/hello.txt", out.host)
            )
            .await,
            hello,
            "b serves the outside host"
        );
        for job in [&a, &c] {
            for url in [
                format!("http://{}:8000/hello.txt", b.job_ip),
                format!("http://{}:{host_port}/hello.txt", job.host_ip),
            ] {
                let got = fetch(&job.netns_name, &url).await;
                assert!(
                    got.is_err(),
                    "{} reached b at {url}: {got:?}",
                    job.netns_name
                );
            }
        }
        for job in [a, b, c] {
            networks.release(job).await.unwrap();
        }
        // The pool holds one per kind: the second public namespace went.
        let list = ip(&["netns", "list"]).await.unwrap();
        let ours: Vec<&str> = list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| networks.inner.names.is_netns(n))
            .collect();
        assert_eq!(ours.len(), 2, "{ours:?}");
        close_and_check(&networks).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_kept_across_a_restart_never_reaches_a_blocked_address_meanwhile() {
        if !can_make_networks() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(23);
        config.blocked = vec![(Ipv4Addr::new(10, 213, 23, 254), 32)];
        let networks = Networks::open(config.clone()).await.unwrap();
        let mut guard = Guard::new(&networks);
        let _out = outside(23, &mut guard, dir.path()).await;
        let job = networks.acquire(NetworkKind::Public, None).await.unwrap();
        // The job tries the blocked address all along (20 ms per try),
        // printing what it reached.
        let probe = "import socket, time\n\
                     end = time.time() + 4\n\
                     while time.time() < end:\n\
                     \x20   s = socket.socket(); s.settimeout(0.02)\n\
                     \x20   try:\n\
                     \x20       s.connect(('10.213.23.254', 8080)); print('REACHED', flush=True)\n\
                     \x20   except OSError:\n\
                     \x20       pass\n\
                     \x20   s.close()\n\
                     print('DONE', flush=True)\n";
        let child = Command::new("ip")
            .args(["netns", "exec", &job.netns_name, "python3", "-c", probe])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The crash (no close: the lock goes with the last handle, as a
        // killed process's), then the restart keeping the job.
        guard.networks = None;
        drop(networks);
        let (reopened, lost) = Networks::open_keeping(config, vec![job.clone()])
            .await
            .unwrap();
        guard.networks = Some(reopened.clone());
        assert!(lost.is_empty(), "{lost:?}");
        let out = child.wait_with_output().await.unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.ends_with("DONE\n"), "the probe did not finish: {out:?}");
        assert!(
            !out.contains("REACHED"),
            "reached it during the restart: {out}"
        );
        reopened.release(job).await.unwrap();
        close_and_check(&reopened).await;
    }

    #[tokio::test]
    async fn open_after_a_crash_removes_the_leftovers() {
        if !can_make_networks() {
            return;
        }
        let config = config(5);
        let networks = Networks::open(config.clone()).await.unwrap();
        // A second worker on the prefix is refused, and changes nothing.
        let second = Networks::open(config.clone()).await;
        assert!(
            matches!(&second, Err(NetworkError::InUse { prefix, .. }) if prefix == "nt5"),
            "{second:?}"
        );
        let job = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        let _more = networks.acquire(NetworkKind::Private, None).await.unwrap();
        let _extra = networks.acquire(NetworkKind::Private, None).await.unwrap();
        // A stray namespace and veth, and a second jump, as a crash
        // mid-change could leave.
        ip(&["netns", "add", "nt5-public-77"]).await.unwrap();
        ip(&[
            "link", "add", "nt5hv9", "type", "veth", "peer", "name", "nt5jv9",
        ])
        .await
        .unwrap();
        iptables("filter", &["-I", "FORWARD", "1", "-j", "NT5-FORWARD"])
            .await
            .unwrap();
        // The crash: the handle goes without close (and with it the lock,
        // as a killed process's).
        drop(job);
        drop(networks);
        let before = leftovers("nt5").await;
        assert!(
            before.iter().any(|l| l.contains("nt5-public-77")),
            "{before:#?}"
        );
        assert!(
            before.iter().any(|l| l.contains("--comment nt5-public-0")),
            "{before:#?}"
        );

        let reopened = Networks::open(config).await.unwrap();
        let guard = Guard::new(&reopened);
        let after = leftovers("nt5").await;
        let mut netns: Vec<&String> = after.iter().filter(|l| l.starts_with("netns")).collect();
        netns.sort();
        assert_eq!(
            netns,
            ["netns nt5-private-0", "netns nt5-public-0"],
            "{after:#?}"
        );
        let links = after.iter().filter(|l| l.starts_with("link")).count();
        assert_eq!(links, 2, "{after:#?}");
        assert!(!after.iter().any(|l| l.contains("--comment")), "{after:#?}");
        for builtin in ["FORWARD", "INPUT", "PREROUTING", "OUTPUT", "POSTROUTING"] {
            let jumps = after
                .iter()
                .filter(|l| **l == format!("iptables -A {builtin} -j NT5-{builtin}"))
                .count();
            assert_eq!(jumps, 1, "{builtin}: {after:#?}");
        }
        close_and_check(&reopened).await;
        drop(guard);
    }

    #[tokio::test]
    async fn acquire_from_the_pool_is_faster_than_making_a_namespace() {
        if !can_make_networks() {
            return;
        }
        let mut config = config(6);
        config.pool_size = 4;
        let t = Instant::now();
        let networks = Networks::open(config).await.unwrap();
        let opened = t.elapsed();
        let _guard = Guard::new(&networks);
        let t = Instant::now();
        let pooled = networks.acquire(NetworkKind::Public, None).await.unwrap();
        let from_pool = t.elapsed();
        let mut held = Vec::new();
        for _ in 1..4 {
            held.push(networks.acquire(NetworkKind::Public, None).await.unwrap());
        }
        let t = Instant::now();
        let made = networks.acquire(NetworkKind::Public, None).await.unwrap();
        let new = t.elapsed();
        let t = Instant::now();
        let published = networks
            .acquire(NetworkKind::Private, Some(80))
            .await
            .unwrap();
        let with_port = t.elapsed();
        assert_eq!(
            made.netns_name, "nt6-public-4",
            "made anew: the pool held four"
        );
        let t = Instant::now();
        networks.release(published).await.unwrap();
        let unpublished = t.elapsed();
        held.push(pooled);
        for job in held {
            networks.release(job).await.unwrap();
        }
        // The pool is full again: this one goes.
        let t = Instant::now();
        networks.release(made).await.unwrap();
        let deleted = t.elapsed();
        assert!(!Path::new("/run/netns/nt6-public-4").exists());
        println!(
            "open (4 + 4 namespaces) {opened:?}; acquire: from the pool {from_pool:?}, a new namespace {new:?}, \
             pooled with a published port {with_port:?}; release: unpublishing to the pool {unpublished:?}, \
             deleting (pool full) {deleted:?}"
        );
        close_and_check(&networks).await;
    }

    /// The EUI-64 link-local address of host veth `veth`, as a job works it
    /// out from its gateway's MAC (in its `/proc/net/arp`).
    fn link_local_of(veth: &str) -> String {
        let mac = std::fs::read_to_string(format!("/sys/class/net/{veth}/address")).unwrap();
        let b: Vec<u8> = mac
            .trim()
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect();
        format!(
            "fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}",
            b[0] ^ 2,
            b[1],
            b[2],
            b[3],
            b[4],
            b[5]
        )
    }

    #[tokio::test]
    async fn jobs_reach_nothing_of_the_host_over_ipv6_not_even_a_dual_stack_api() {
        if !can_make_networks() {
            return;
        }
        // The API listening on `[::]:PORT` (dual stack), as `--listen
        // [::]:5000` makes it.
        let api = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
        let api_port = api.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = api.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\napi\n").await;
            }
        });
        let mut config = config(21);
        config.api_port = Some(api_port);
        let networks = Networks::open(config).await.unwrap();
        let _guard = Guard::new(&networks);
        let public = networks.acquire(NetworkKind::Public, None).await.unwrap();
        let private = networks.acquire(NetworkKind::Private, None).await.unwrap();
        // The listener answers jobs allowed to reach it (over IPv4).
        let v4 = format!("http://{}:{api_port}/", private.host_ip);
        assert_eq!(fetch(&private.netns_name, &v4).await, Ok("api\n".into()));
        for job in [&public, &private] {
            // An address the host end has is usable once its duplicate
            // address detection is over (a second or two).
            let deadline = Instant::now() + Duration::from_secs(10);
            while ip(&["-6", "-o", "address", "show", "dev", &job.host_veth])
                .await
                .unwrap()
                .contains("tentative")
            {
                assert!(Instant::now() < deadline, "still tentative after 10 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let url = format!(
                "http://[{}%25eth0]:{api_port}/",
                link_local_of(&job.host_veth)
            );
            let got = fetch(&job.netns_name, &url).await;
            assert!(got.is_err(), "{} reached {url}: {got:?}", job.netns_name);
            let v6 = ip(&["-6", "-o", "address", "show", "dev", &job.host_veth])
                .await
                .unwrap();
            assert_eq!(v6, "", "the host end {} has IPv6", job.host_veth);
        }
        networks.release(public).await.unwrap();
        networks.release(private).await.unwrap();
        close_and_check(&networks).await;
    }

    #[tokio::test]
    async fn an_acquire_given_up_midway_leaves_nothing_and_frees_its_port() {
        if !can_make_networks() {
            return;
        }
        let networks = Networks::open(config(7)).await.unwrap();
        let _guard = Guard::new(&networks);
        let held = networks.acquire(NetworkKind::Public, None).await.unwrap();
        assert_eq!(held.netns_name, "nt7-public-0");
        // The pool is empty: the next one is made (10 ms or more), and its
        // caller gives up after 2 ms.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(2),
            networks.acquire(NetworkKind::Public, Some(8000)),
        )
        .await;
        assert!(gave_up.is_err(), "made within 2 ms: {gave_up:?}");
        let freed = || {
            let state = networks.state();
            state.ports.is_empty() && !state.taken[NetworkKind::Public.slot()].contains(&1)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !freed() {
            assert!(
                Instant::now() < deadline,
                "the slot and port were not freed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = leftovers("nt7").await;
        assert!(
            !left
                .iter()
                .any(|l| l.contains("nt7-public-1") || l.contains("nt7hp1")),
            "{left:#?}"
        );
        // The slot and the host port are usable again.
        let again = networks
            .acquire(NetworkKind::Public, Some(8000))
            .await
            .unwrap();
        assert_eq!(again.netns_name, "nt7-public-1");
        assert_eq!(again.published, Some((40700, 8000)));
        networks.release(again).await.unwrap();
        networks.release(held).await.unwrap();
        close_and_check(&networks).await;
    }

    #[test]
    fn a_bad_config_is_refused_naming_the_field() {
        let bad = |f: fn(&mut NetworkConfig)| {
            let mut c = NetworkConfig::default();
            f(&mut c);
            match check_config(&c) {
                Err(NetworkError::Config { field, message }) => format!("{field}: {message}"),
                other => panic!("accepted: {other:?}"),
            }
        };
        assert!(bad(|c| c.prefix = "way-too-long-prefix".into()).starts_with("prefix: "));
        assert!(bad(|c| c.prefix = "BW".into()).starts_with("prefix: "));
        assert!(bad(|c| c.prefix = String::new()).starts_with("prefix: "));
        assert!(bad(|c| c.public_range = (Ipv4Addr::new(172, 21, 0, 1), 16))
            .contains("did you mean 172.21.0.0/16?"));
        assert!(bad(|c| c.public_range = (Ipv4Addr::new(172, 21, 0, 0), 25))
            .starts_with("public_range: "));
        assert!(bad(|c| c.private_range = c.public_range).starts_with("private_range: "));
        #[allow(clippy::reversed_empty_ranges)]
        let empty = bad(|c| c.port_range = 5..=4);
        assert!(empty.starts_with("port_range: "));
        assert!(bad(|c| c.pool_size = 300).starts_with("pool_size: "));
        let api = bad(|c| c.api_port = Some(46600));
        assert!(
            api.starts_with("port_range: ") && api.contains("API port 46600"),
            "{api}"
        );
        let ok = check_config(&NetworkConfig::default()).unwrap();
        assert_eq!(ok[0], (u32::from(Ipv4Addr::new(172, 21, 0, 0)), 256));
    }

    #[test]
    fn names_match_only_this_prefix() {
        let names = Names::new("bw");
        assert!(names.is_netns("bw-public-3") && names.is_netns("bw-private-12"));
        assert!(
            !names.is_netns("bw-public-")
                && !names.is_netns("bw-outside")
                && !names.is_netns("bw2-public-1")
        );
        assert!(names.is_host_veth("bwhp3") && names.is_host_veth("bwhv255"));
        assert!(
            !names.is_host_veth("bwhx3")
                && !names.is_host_veth("bwo")
                && !names.is_host_veth("bw2hp1")
        );
        assert_eq!(names.chain("FORWARD"), "BW-FORWARD");
        assert_eq!(
            addresses(u32::from(Ipv4Addr::new(172, 21, 0, 0)), 3),
            (Ipv4Addr::new(172, 21, 3, 10), Ipv4Addr::new(172, 21, 3, 11))
        );
    }
}
