//! `serve`'s flags of job networks (`--container-network namespace`): the
//! address pools, the published port range, the public resolvers and the
//! addresses public jobs never reach. See [`crate::network`].

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use clap::Args;

use crate::cli::heading;
use crate::cli::StartError;
use crate::network::NetworkConfig;

/// Flags of the job networks.
#[derive(Debug, Clone, Args)]
pub struct JobNetworkArgs {
    #[arg(help_heading = heading::CONTAINERS)]
    /// Addresses of public jobs (`--container-network namespace`): a /24
    /// per job namespace (Hail's 172.21.0.0/16).
    #[arg(long, default_value = "172.21.0.0/16", value_name = "CIDR", value_parser = parse_cidr)]
    pub job_network_public: ipnet::Ipv4Net,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Addresses of private jobs (Hail's 172.20.0.0/16).
    #[arg(long, default_value = "172.20.0.0/16", value_name = "CIDR", value_parser = parse_cidr)]
    pub job_network_private: ipnet::Ipv4Net,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Namespaces of each kind made ahead of time, so that a job's start
    /// does not wait for one.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub job_network_pool: usize,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Host ports for jobs' published `port`s, FIRST-LAST (TCP); a job
    /// gets its own in `HAIL_BATCH_WORKER_PORT`.
    #[arg(long, default_value = "46572-47571", value_name = "FIRST-LAST", value_parser = parse_port_range)]
    pub job_port_range: RangeInclusive<u16>,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Nameservers of public jobs (their /etc/resolv.conf); private jobs
    /// get the host's.
    #[arg(
        long,
        default_value = "8.8.8.8,8.8.4.4",
        value_delimiter = ',',
        value_name = "IP,...",
        value_parser = parse_ip
    )]
    pub public_dns: Vec<Ipv4Addr>,
    #[arg(help_heading = heading::CONTAINERS)]
    /// The cloud's metadata server: public jobs never reach it (on the
    /// host nor through it).
    #[arg(long, default_value = "169.254.169.254", value_name = "IP", value_parser = parse_ip)]
    pub metadata_address: Ipv4Addr,
    #[arg(help_heading = heading::CONTAINERS)]
    /// The cluster's internal addresses, which public jobs never reach
    /// (e.g. 10.128.0.0/9,10.0.0.0/8); private jobs do.
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...", value_parser = parse_cidr)]
    pub internal_cidrs: Vec<ipnet::Ipv4Net>,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Names of the job networks' namespaces (`<prefix>-public-N`), host
    /// veths (`<prefix>h…`), iptables chains (`<PREFIX>-FORWARD`…) and lock
    /// (`/run/batch-worker-networks-<prefix>.lock`): 1 to 10 of a-z0-9, a
    /// letter first. One worker per host holds a prefix.
    #[arg(long, default_value = "bw", value_name = "PREFIX")]
    pub job_network_prefix: String,
}

/// An IPv4 network `ADDRESS/LENGTH`, e.g. `10.128.0.0/9`.
fn parse_cidr(text: &str) -> Result<ipnet::Ipv4Net, String> {
    text.trim().parse::<ipnet::Ipv4Net>().map_err(|_| {
        format!(
            "{text:?} is not an IPv4 network: expected ADDRESS/LENGTH (length 0 to 32), e.g. 10.128.0.0/9; separate several with commas, no spaces"
        )
    })
}

/// An IPv4 address, e.g. `169.254.169.254`.
fn parse_ip(text: &str) -> Result<Ipv4Addr, String> {
    text.trim().parse::<Ipv4Addr>().map_err(|_| {
        format!("{text:?} is not an IPv4 address: expected four numbers such as 169.254.169.254 (no /length, no :port)")
    })
}

/// `46572-47571` (or one port) as a range.
fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                format!("{p:?} is not a port (1 to 65535); expected FIRST-LAST, e.g. 46572-47571")
            })
    };
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => (port(text)?, port(text)?),
    };
    if first > last {
        return Err(format!(
            "{first}-{last}: the first port is after the last; did you mean {last}-{first}?"
        ));
    }
    Ok(first..=last)
}

impl JobNetworkArgs {
    /// The network config these flags give, for a worker whose API listens
    /// on `api_port` (public jobs are kept from it).
    ///
    /// # Errors
    /// [`StartError::Invalid`] naming the flag whose value is unusable.
    pub fn config(&self, api_port: Option<u16>) -> Result<NetworkConfig, StartError> {
        let net = |n: ipnet::Ipv4Net| (n.network(), n.prefix_len());
        let check = |flag: &str, n: ipnet::Ipv4Net| {
            if n.addr() != n.network() {
                return Err(StartError::Invalid(format!(
                    "--{flag} {n}: the address has host bits set; did you mean {}?",
                    n.trunc()
                )));
            }
            Ok(())
        };
        check("job-network-public", self.job_network_public)?;
        check("job-network-private", self.job_network_private)?;
        for &internal in &self.internal_cidrs {
            check("internal-cidrs", internal)?;
        }
        let mut blocked = vec![(self.metadata_address, 32)];
        blocked.extend(self.internal_cidrs.iter().map(|&n| net(n)));
        let config = NetworkConfig {
            public_range: net(self.job_network_public),
            private_range: net(self.job_network_private),
            pool_size: self.job_network_pool,
            port_range: self.job_port_range.clone(),
            public_dns: self.public_dns.clone(),
            blocked,
            api_port,
            prefix: self.job_network_prefix.clone(),
        };
        crate::network::check(&config).map_err(|e| match e {
            crate::network::NetworkError::Config { field, message } => {
                StartError::Invalid(format!("--{}: {}", flag_of(field), flags_in(&message)))
            }
            other => StartError::Invalid(format!("--container-network namespace: {other}")),
        })?;
        Ok(config)
    }
}

/// The flag that sets [`NetworkConfig`]'s `field`.
fn flag_of(field: &str) -> &'static str {
    match field {
        "public_range" => "job-network-public",
        "private_range" => "job-network-private",
        "pool_size" => "job-network-pool",
        "port_range" => "job-port-range",
        "prefix" => "job-network-prefix",
        "blocked" => "internal-cidrs",
        _ => "container-network",
    }
}

/// `message` with the config's field names said as their flags.
fn flags_in(message: &str) -> String {
    ["public_range", "private_range", "pool_size", "port_range"]
        .iter()
        .fold(message.to_owned(), |m, field| {
            m.replace(field, &format!("--{}", flag_of(field)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: JobNetworkArgs,
    }

    fn config(flags: &[&str]) -> Result<NetworkConfig, String> {
        let flags = Flags::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        flags.args.config(Some(5000)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_are_hails() {
        let c = config(&[]).unwrap();
        assert_eq!(c.public_range, (Ipv4Addr::new(172, 21, 0, 0), 16));
        assert_eq!(c.private_range, (Ipv4Addr::new(172, 20, 0, 0), 16));
        assert_eq!(c.port_range, 46572..=47571);
        assert_eq!(c.blocked, [(Ipv4Addr::new(169, 254, 169, 254), 32)]);
        assert_eq!(c.api_port, Some(5000));
        assert_eq!(c.public_dns.len(), 2);
    }

    #[test]
    fn internal_cidrs_add_to_the_metadata_address() {
        let c = config(&["--internal-cidrs", "10.128.0.0/9,192.168.0.0/16"]).unwrap();
        assert_eq!(
            c.blocked,
            [
                (Ipv4Addr::new(169, 254, 169, 254), 32),
                (Ipv4Addr::new(10, 128, 0, 0), 9),
                (Ipv4Addr::new(192, 168, 0, 0), 16)
            ]
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = config(&["--job-port-range", "47000-46000"]).unwrap_err();
        assert!(e.contains("did you mean 46000-47000?"), "{e}");
        let e = config(&["--job-port-range", "0-10"]).unwrap_err();
        assert!(e.contains("not a port"), "{e}");
        let e = config(&["--job-network-public", "172.21.0.1/16"]).unwrap_err();
        assert!(
            e.contains("--job-network-public") && e.contains("172.21.0.0/16"),
            "{e}"
        );
        let e = config(&["--job-network-private", "172.21.0.0/16"]).unwrap_err();
        assert!(
            e.starts_with("--job-network-private: ")
                && e.contains("overlaps --job-network-public 172.21.0.0/16"),
            "{e}"
        );
        let e = config(&["--job-network-public", "10.0.0.0/26"]).unwrap_err();
        assert!(e.contains("prefix length"), "{e}");
        let e = config(&["--job-network-pool", "300"]).unwrap_err();
        assert!(
            e.starts_with("--job-network-pool: ") && e.contains("--job-network-public"),
            "{e}"
        );
        let e = config(&["--internal-cidrs", "10.0.0.0"]).unwrap_err();
        assert!(
            e.contains("--internal-cidrs") && e.contains("ADDRESS/LENGTH"),
            "{e}"
        );
        let e = config(&["--internal-cidrs", "10.0.0.1/8"]).unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
        let e = config(&["--metadata-address", "169.254.169.254/32"]).unwrap_err();
        assert!(e.contains("no /length"), "{e}");
        let e = config(&["--public-dns", "8.8.8.8:53"]).unwrap_err();
        assert!(e.contains("no :port"), "{e}");
        // The API's port (5000 here) is never a job's host port.
        let e = config(&["--job-port-range", "4990-5010"]).unwrap_err();
        assert!(
            e.contains("`--job-port-range`") && e.contains("API port 5000"),
            "{e}"
        );
        assert_eq!(
            config(&["--job-port-range", "8080"]).unwrap().port_range,
            8080..=8080
        );
    }
}
