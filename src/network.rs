//! A network namespace per container job, as Hail's worker gives it
//! (issue 21): the host side. Skeleton; the body follows.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

/// Which network a job gets (the spec's `network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// The internet, but not the `blocked` CIDRs nor the worker's API port.
    Public,
    /// The internet and the internal addresses too, with the host's DNS.
    Private,
}

/// What [`Networks::open`] builds.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Public jobs' addresses: a /24 per namespace; default 172.21.0.0/16.
    pub public_range: (Ipv4Addr, u8),
    /// Private jobs' addresses; default 172.20.0.0/16.
    pub private_range: (Ipv4Addr, u8),
    /// Namespaces kept ready per kind; default 4.
    pub pool_size: usize,
    /// Host ports for published ports; default 46572..=47571.
    pub port_range: RangeInclusive<u16>,
    /// Public jobs' nameservers; default 8.8.8.8, 8.8.4.4.
    pub public_dns: Vec<Ipv4Addr>,
    /// CIDRs public jobs never reach; default 169.254.169.254/32.
    pub blocked: Vec<(Ipv4Addr, u8)>,
    /// The worker's own API port: public jobs may not reach the host on it.
    pub api_port: Option<u16>,
    /// Name prefix of namespaces, veths and chains; default "bw".
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
        command: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A field of [`NetworkConfig`] is unusable.
    #[error("network config `{field}`: {message}")]
    Config { field: &'static str, message: String },
    /// Every host port of `port_range` is published already.
    #[error("no free host port in {first}..={last}: every one is published by a running job")]
    PortsExhausted { first: u16, last: u16 },
    /// Every address slot of the range is in use.
    #[error("no free {kind:?} network: all {slots} address slots are in use")]
    Exhausted { kind: NetworkKind, slots: usize },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`Networks::close`] has run.
    #[error("the job networks are closed")]
    Closed,
}

/// The job networks of one worker: a Clone-able handle.
#[derive(Clone)]
pub struct Networks {
    #[allow(dead_code)]
    inner: Arc<()>,
}

/// One job's network namespace, from [`Networks::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNetwork {
    pub kind: NetworkKind,
    pub netns_name: String,
    pub netns_path: PathBuf,
    pub host_ip: Ipv4Addr,
    pub job_ip: Ipv4Addr,
    pub host_veth: String,
    pub published: Option<(u16, u16)>,
    pub resolv_conf: String,
    pub hosts: String,
}

impl Networks {
    /// Removes leftovers with this prefix, installs the chains, enables
    /// forwarding, fills the pools.
    pub async fn open(_config: NetworkConfig) -> Result<Networks, NetworkError> {
        todo!()
    }

    /// A ready namespace of `kind`, with `port` published when Some.
    pub async fn acquire(
        &self,
        _kind: NetworkKind,
        _port: Option<u16>,
    ) -> Result<JobNetwork, NetworkError> {
        todo!()
    }

    /// Removes the job's port mapping and returns the namespace to the pool.
    pub async fn release(&self, _job: JobNetwork) -> Result<(), NetworkError> {
        todo!()
    }

    /// Bytes (received, sent) by the job.
    pub fn counters(&self, _job: &JobNetwork) -> std::io::Result<(u64, u64)> {
        todo!()
    }

    /// Deletes every namespace, veth, chain and rule this prefix made.
    pub async fn close(&self) -> Result<(), NetworkError> {
        todo!()
    }
}
