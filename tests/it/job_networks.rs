//! Container jobs in network namespaces of their own
//! (`--container-network namespace`, issue 21), on real namespaces and
//! rules. Each test makes an "outside host" of its own: a namespace joined
//! to this host by a veth, 10.219.N.2 with an HTTP server on port 8080,
//! 10.219.N.254 (a stand-in metadata address) and 10.218.N.2 (a stand-in
//! internal network) on it, 10.219.N.1 on the host's end. Nothing beyond
//! this machine is reached. Each test has its own prefix, ranges and host
//! ports, so they run in parallel.
//!
//! They need the test images (see `containers.rs`) and root with `ip` and
//! `iptables`; without, they skip, saying so (CI requires them).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use batch_worker::container::{ContainerNetwork, JobNetworks, RuncConfig, RuncRunner};
use batch_worker::image::{ImageConfig, ImageStore, PullProcess};
use batch_worker::network::NetworkConfig;
use batch_worker::runner::Runner;
use batch_worker_model::{JobKey, JobState, Outcome};
use serde_json::{json, Value};

use crate::support::{bunch, create_body, Harness, Options, ServeChild};

/// The test image, or `None` (skip: recorded) without the registry or
/// without root, `ip` and `iptables`.
fn image() -> Option<String> {
    let image = crate::skips::service_var(crate::skips::Service::Containers, "BW_TEST_IMAGE")?;
    crate::skips::root_network().then_some(image)
}

/// Runs `program args`, which must succeed.
fn must(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The outside host of test `n` (see the module docs); removed on drop.
struct OutsideHost {
    netns: String,
    veth: String,
    server: std::process::Child,
    /// Its address on the host's end: where published ports are reached.
    host_side: String,
}

impl OutsideHost {
    fn start(n: u8, dir: &Path) -> OutsideHost {
        let netns = format!("bwit{n}-outside");
        let veth = format!("bwit{n}o");
        let _ = Command::new("ip").args(["link", "delete", &veth]).output();
        let _ = Command::new("ip")
            .args(["netns", "delete", &netns])
            .output();
        let a = |last: u8| format!("10.219.{n}.{last}");
        must("ip", &["netns", "add", &netns]);
        must(
            "ip",
            &[
                "link", "add", "name", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ],
        );
        must(
            "ip",
            &["address", "add", &format!("{}/24", a(1)), "dev", &veth],
        );
        must("ip", &["link", "set", &veth, "up"]);
        for address in [
            format!("{}/24", a(2)),
            format!("{}/32", a(254)),
            format!("10.218.{n}.2/24"),
        ] {
            must(
                "ip",
                &["-n", &netns, "address", "add", &address, "dev", "eth0"],
            );
        }
        must("ip", &["-n", &netns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        must(
            "ip",
            &["-n", &netns, "route", "add", "default", "via", &a(1)],
        );
        must(
            "ip",
            &[
                "route",
                "replace",
                &format!("10.218.{n}.0/24"),
                "via",
                &a(2),
            ],
        );
        std::fs::write(dir.join("hello.txt"), format!("hello from outside {n}\n")).unwrap();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "python3",
                "-m",
                "http.server",
                "8080",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let host = OutsideHost {
            netns,
            veth,
            server,
            host_side: a(1),
        };
        let url = format!("http://{}:8080/hello.txt", a(2));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while host.fetch_from_host(&url).is_err() {
            assert!(std::time::Instant::now() < deadline, "no server at {url}");
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// `curl` of `url` (2 s at most) from this host's own namespace.
    fn fetch_from_host(&self, url: &str) -> Result<String, String> {
        curl(&["curl", "-sS", "-m", "2", url])
    }

    /// `curl` of `url` (3 s at most) from the outside host.
    fn fetch(&self, url: &str) -> Result<String, String> {
        curl(&[
            "ip",
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-sS",
            "-m",
            "3",
            url,
        ])
    }
}

fn curl(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .output();
    }
}

/// What of `prefix` is on this host: its namespaces (`netns NAME`), host
/// veths (`link NAME`) and iptables lines.
fn leftovers(prefix: &str) -> Vec<String> {
    let text = |program: &str, args: &[&str]| {
        String::from_utf8(Command::new(program).args(args).output().unwrap().stdout).unwrap()
    };
    let mut left = Vec::new();
    for line in text("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&format!("{prefix}-")) && !name.ends_with("-outside") {
            left.push(format!("netns {name}"));
        }
    }
    for line in text("ip", &["-o", "link", "show"]).lines() {
        let name = line.split(": ").nth(1).unwrap_or_default();
        let name = name.split('@').next().unwrap_or_default();
        if name.starts_with(&format!("{prefix}h")) {
            left.push(format!("link {name}"));
        }
    }
    let upper = prefix.to_ascii_uppercase();
    for line in text("iptables-save", &[]).lines() {
        if line.contains(&format!("{upper}-")) || line.contains(&format!("{prefix}-")) {
            left.push(format!("iptables {line}"));
        }
    }
    left
}

/// The port-publishing rules left (those carrying a namespace's name).
fn port_rules(prefix: &str) -> Vec<String> {
    leftovers(prefix)
        .into_iter()
        .filter(|l| l.contains("--comment"))
        .collect()
}

/// Test `n`'s job network config: ranges 10.(230+2n).0.0/16 (public) and
/// 10.(231+2n).0.0/16, one namespace per pool, host ports 41000+100n..+9,
/// the outside host's stand-in metadata and internal addresses blocked.
fn network_config(n: u8) -> NetworkConfig {
    let ports = 41000 + 100 * u16::from(n);
    NetworkConfig {
        public_range: (format!("10.{}.0.0", 230 + 2 * n).parse().unwrap(), 16),
        private_range: (format!("10.{}.0.0", 231 + 2 * n).parse().unwrap(), 16),
        pool_size: 1,
        port_range: ports..=ports + 9,
        public_dns: vec![format!("10.219.{n}.2").parse().unwrap()],
        blocked: vec![
            (format!("10.219.{n}.254").parse().unwrap(), 32),
            (format!("10.218.{n}.0").parse().unwrap(), 24),
        ],
        api_port: None,
        prefix: format!("bwit{n}"),
    }
}

/// A `sh -c script` job in `image` with `extra` spec fields.
fn job(job_id: i64, image: &str, script: &str, extra: Value) -> Value {
    let mut spec = json!({
        "job_id": job_id,
        "process": {"type": "docker", "image": image, "command": ["sh", "-c", script]},
        "resources": {"cores_mcpu": 250, "memory_bytes": 64 << 20, "storage_gib": 0},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

/// A script trying each `http://HOST:PORT/PATH` with busybox `nc` (its
/// `wget` crashes, being static): `REACHED url` and the body's last line,
/// or `BLOCKED url`, per URL.
fn probe(urls: &[String]) -> String {
    let mut script = String::from("cat /etc/resolv.conf /etc/hosts; ");
    for url in urls {
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        let (host, port) = authority.split_once(':').unwrap();
        script.push_str(&format!(
            "out=$(printf 'GET /{path} HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} {port}); \
             case \"$out\" in *200*) echo REACHED {url}; echo \"$out\" | tail -n 1;; \
             *) echo BLOCKED {url};; esac; "
        ));
    }
    script
}

#[tokio::test]
async fn public_and_private_jobs_reach_what_their_mode_allows_a_port_is_published_and_nothing_is_left(
) {
    let Some(image) = image() else {
        return;
    };
    let n = 1;
    let dir = tempfile::tempdir().unwrap();
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = OutsideHost::start(n, outside_dir.path());
    let networks = JobNetworks::open(
        network_config(n),
        dir.path().join("networks"),
        dir.path(),
        "10.219.1.1".into(),
    )
    .await
    .unwrap();
    let runner = Arc::new(
        RuncRunner::new(RuncConfig {
            runc: "runc".into(),
            state_dir: dir.path().join("runc"),
            network: ContainerNetwork::Namespace,
            job_networks: Some(networks),
            kill_grace: Duration::from_millis(500),
        })
        .unwrap(),
    );
    let mut config = ImageConfig::new(dir.path().join("images"));
    config.insecure_registries = vec![image.split('/').next().unwrap().to_owned()];
    config.pull_process = Some(PullProcess {
        program: env!("CARGO_BIN_EXE_batch-worker").into(),
        max_memory_bytes: 256 << 20,
    });
    let images = Arc::new(ImageStore::new(config).unwrap());
    let mut h = Harness::with_options(Options {
        executor: Some((runner.clone(), images)),
        ..Options::default()
    })
    .await;

    let (web, metadata, internal) = (
        "http://10.219.1.2:8080/hello.txt".to_owned(),
        "http://10.219.1.254:8080/hello.txt".to_owned(),
        "http://10.218.1.2:8080/hello.txt".to_owned(),
    );
    let urls = [web.clone(), metadata.clone(), internal.clone()];
    let serve = "echo PORT=$HAIL_BATCH_WORKER_PORT IP=$HAIL_BATCH_WORKER_IP; \
                 mkdir -p /tmp/www && echo served > /tmp/www/x && exec httpd -f -p 8000 -h /tmp/www";
    bunch(
        &h,
        1,
        "tokN",
        &[
            job(1, &image, &probe(&urls), json!({})),
            job(2, &image, &probe(&urls), json!({"network": "private"})),
            job(3, &image, serve, json!({"port": 8000})),
        ],
    )
    .await;
    for job_id in 1..=3 {
        h.accept(1, job_id, "tokN").await;
    }
    let ok = JobState::Done {
        outcome: Outcome::Succeeded,
    };

    // A public job: the outside host through NAT, never the metadata or
    // internal addresses; the public resolver.
    assert_eq!(h.wait_final(1, 1).await, ok, "{}", h.log_text(1, 1).await);
    let log = h.log_text(1, 1).await;
    assert!(log.contains("nameserver 10.219.1.2\n"), "{log}");
    assert!(log.contains("10.232.0.11\tjob-1\n"), "its own name: {log}");
    assert!(log.contains("hello from outside 1\n"), "{log}");
    for (url, word) in [
        (&web, "REACHED"),
        (&metadata, "BLOCKED"),
        (&internal, "BLOCKED"),
    ] {
        assert!(log.contains(&format!("{word} {url}")), "public: {log}");
    }
    let (_, status) = h.status(1, 1).await;
    assert_eq!(
        status["batch_worker"]["network"],
        json!({"mode": "public", "ip": "10.232.0.11"}),
        "{status}"
    );

    // A private job reaches all three, with the host's resolver.
    assert_eq!(h.wait_final(1, 2).await, ok, "{}", h.log_text(1, 2).await);
    let log = h.log_text(1, 2).await;
    for url in &urls {
        assert!(log.contains(&format!("REACHED {url}")), "private: {log}");
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if let Some(line) = host_resolv.lines().find(|l| l.starts_with("nameserver")) {
        assert!(log.contains(line), "private resolver: {log}");
    }

    // A port job: published on the first host port, told which, and
    // answering the outside host there.
    h.wait_executing(1, 3).await;
    let (_, status) = h.status(1, 3).await;
    let network = &status["batch_worker"]["network"];
    assert_eq!(network["port"], 8000, "{status}");
    assert_eq!(network["host_port"], 41100, "{status}");
    let job_ip = network["ip"].as_str().unwrap().to_owned();
    let url = format!("http://{}:41100/x", outside.host_side);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let served = loop {
        match outside.fetch(&url) {
            Ok(body) => break body,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{url}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(served, "served\n");
    assert!(h.log_text(1, 3).await.contains("PORT=41100 IP=10.219.1.1"));
    let key = JobKey {
        batch_id: 1,
        job_id: 3,
        attempt_id: "a3".to_owned(),
    };
    let (up, down) = runner.network_bytes(&key).expect("the job's counters");
    assert!(up > 0 && down > 0, "bytes up {up}, down {down}");
    // The resource usage carries Hail's two network fields: finite, and
    // the answer the job sent shows as upload.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, usage) = h.get("/api/v1alpha/batches/1/jobs/3/resource_usage").await;
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(usage["main"].as_str().unwrap_or_default())
            .unwrap();
        let records = batch_worker::resource_usage::decode(&bytes).unwrap_or_default();
        if records.iter().any(|r| r.network_upload > 0.0) {
            assert!(
                records
                    .iter()
                    .all(|r| r.network_upload.is_finite() && r.network_download.is_finite()),
                "{records:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upload in the resource usage: {records:?}"
        );
        outside.fetch(&url).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Two jobs: the next public job reaches neither the port job's
    // address nor its published port (through its own gateway).
    let gateway = job_ip.rsplit_once('.').unwrap().0.to_owned() + ".10";
    let other = [
        format!("http://{job_ip}:8000/x"),
        format!("http://{gateway}:41100/x"),
        format!("http://{}:41100/x", outside.host_side),
    ];
    bunch(&h, 2, "tokM", &[job(1, &image, &probe(&other), json!({}))]).await;
    h.accept(2, 1, "tokM").await;
    assert_eq!(h.wait_final(2, 1).await, ok);
    let log = h.log_text(2, 1).await;
    for url in &other {
        assert!(log.contains(&format!("BLOCKED {url}")), "isolation: {log}");
    }

    // Ended, the port job leaves no mapping; only the pools (one
    // namespace per kind) are left while the worker runs.
    h.cancel(1, 3).await;
    h.wait_final(1, 3).await;
    assert!(outside.fetch(&url).is_err(), "still published");
    assert_eq!(port_rules("bwit1"), Vec::<String>::new());
    let mut netns: Vec<String> = leftovers("bwit1")
        .into_iter()
        .filter(|l| l.starts_with("netns"))
        .collect();
    netns.sort();
    assert_eq!(netns, ["netns bwit1-private-0", "netns bwit1-public-0"]);
    let records: Vec<_> = std::fs::read_dir(dir.path().join("networks"))
        .unwrap()
        .collect();
    assert!(records.is_empty(), "records left: {records:?}");
    // A graceful stop removes the rest.
    h.shutdown().await;
    assert_eq!(leftovers("bwit1"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_running_jobs_network_and_port_survive_the_restart_then_nothing_is_left() {
    let Some(image) = image() else {
        return;
    };
    let n = 2;
    let config = network_config(n);
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = OutsideHost::start(n, outside_dir.path());
    let data = tempfile::tempdir().unwrap();
    let specs = tempfile::tempdir().unwrap();
    let driver = batch_worker::demo::driver::EmbeddedDriver::start()
        .await
        .unwrap();
    let writer = batch_worker::spec_store::SpecStore::new(
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(specs.path()).unwrap()),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let serve =
        "mkdir -p /tmp/www && echo served > /tmp/www/x && exec httpd -f -p 8000 -h /tmp/www";
    writer
        .write_bunch(
            7,
            "tokK",
            &[serde_json::to_vec(&job(1, &image, serve, json!({"port": 8000}))).unwrap()],
        )
        .await
        .unwrap();
    let registry = image.split('/').next().unwrap().to_owned();
    let public = format!("{}/16", config.public_range.0);
    let private = format!("{}/16", config.private_range.0);
    let ports = format!("{}-{}", config.port_range.start(), config.port_range.end());
    let flags = [
        "--executor",
        "runc",
        "--insecure-registry",
        &registry,
        "--container-network",
        "namespace",
        "--job-network-prefix",
        "bwit2",
        "--job-network-public",
        &public,
        "--job-network-private",
        &private,
        "--job-network-pool",
        "1",
        "--job-port-range",
        &ports,
    ];
    let mut first = ServeChild::start(data.path(), specs.path(), driver.url.as_str(), &flags).await;
    let http = reqwest::Client::new();
    let status = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", first.base))
        .json(&create_body(7, 1, "tokK", 1))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    first.wait_event(7, 1, "process_started").await;
    let url = format!("http://{}:41200/x", outside.host_side);
    let fetch_soon = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match outside.fetch(&url) {
                Ok(body) => return body,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "{what}: {url}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    };
    assert_eq!(fetch_soon("before the crash"), "served\n");

    // kill -9: the container runs on under its shim, still published.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(fetch_soon("while no worker runs"), "served\n");

    let second = ServeChild::start(data.path(), specs.path(), driver.url.as_str(), &flags).await;
    let answer: Value = http
        .get(format!(
            "{}/api/v1alpha/batches/7/jobs/1/status",
            second.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["state"], "running", "{answer}");
    assert_eq!(answer["batch_worker"]["network"]["host_port"], 41200);
    assert_eq!(fetch_soon("after the restart"), "served\n");
    // Published once, not twice; the pool was refilled beside it.
    assert_eq!(port_rules("bwit2").len(), 3, "{:#?}", port_rules("bwit2"));

    http.delete(format!(
        "{}/api/v1alpha/batches/7/jobs/1/delete",
        second.base
    ))
    .send()
    .await
    .unwrap();
    second.wait_event(7, 1, "process_exited").await;
    assert!(
        outside.fetch(&url).is_err(),
        "still published after the end"
    );
    assert_eq!(port_rules("bwit2"), Vec::<String>::new());
    // SIGTERM: a graceful stop removes every namespace, veth and rule.
    let mut second = second;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    second.child.wait().unwrap();
    assert_eq!(leftovers("bwit2"), Vec::<String>::new());
}
