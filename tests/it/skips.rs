//! Tests that need an outside service (the blob-store emulators, the
//! container registry) ask for it here. With the service's variable set
//! they run; with `BW_REQUIRE_EMULATORS` / `BW_REQUIRE_CONTAINERS` set and
//! the variable missing they fail; otherwise they skip, and the binary
//! prints one line at its exit, past libtest's output capture, naming how
//! many tests skipped and why, so that a skip never looks like a pass.

use std::collections::BTreeMap;
use std::sync::{Mutex, Once};

/// The services tests need, by the variable that locates them.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// Azurite and moto (`scripts/emulators.sh start`, then `. .emulators/env`).
    Emulators,
    /// runc and a registry of test images (`eval "$(scripts/containers.sh start)"`).
    Containers,
}

impl Service {
    fn required_by(self) -> &'static str {
        match self {
            Service::Emulators => "BW_REQUIRE_EMULATORS",
            Service::Containers => "BW_REQUIRE_CONTAINERS",
        }
    }

    fn how(self) -> &'static str {
        match self {
            Service::Emulators => "scripts/emulators.sh start && . .emulators/env",
            Service::Containers => "eval \"$(scripts/containers.sh start)\"",
        }
    }
}

/// Skipped tests (by test name) and the variable each lacked.
static SKIPPED: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
static AT_EXIT: Once = Once::new();

/// The value of `var`, which locates `service`; `None` when it is unset
/// (the calling test then skips: recorded, and summed up at exit).
///
/// # Panics
/// When `var` is unset but the service is required (CI).
pub fn service_var(service: Service, var: &str) -> Option<String> {
    if let Ok(value) = std::env::var(var) {
        return Some(value);
    }
    let required = service.required_by();
    assert!(
        std::env::var_os(required).is_none(),
        "{var} is not set but {required} is: start the service first ({})",
        service.how()
    );
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    eprintln!("skipped: {var} is not set ({})", service.how());
    record(test, var);
    None
}

/// Records that `test` skipped for want of `what`.
fn record(test: String, what: &str) {
    SKIPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(test, what.to_owned());
    AT_EXIT.call_once(|| {
        // SAFETY: `summary` is an `extern "C" fn()` that does not unwind.
        unsafe { libc::atexit(summary) };
    });
}

/// Whether this process may make network namespaces and rules (root,
/// with `ip` and `iptables`); when not, the calling test skips (recorded)
/// unless `BW_REQUIRE_NETWORK` is set (CI), where it fails.
pub fn root_network() -> bool {
    if batch_worker::network::can_make_networks() {
        return true;
    }
    assert!(
        std::env::var_os("BW_REQUIRE_NETWORK").is_none(),
        "BW_REQUIRE_NETWORK is set but this process is not root with ip and iptables"
    );
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    eprintln!("skipped: network namespace tests need root, ip and iptables");
    record(test, "root with ip and iptables");
    false
}

/// Writes the skip summary to fd 2 (libtest captures `eprintln!` inside
/// tests, not writes to the descriptor).
extern "C" fn summary() {
    let skipped = match SKIPPED.lock() {
        Ok(skipped) => skipped,
        Err(p) => p.into_inner(),
    };
    if skipped.is_empty() {
        return;
    }
    let mut by_var: BTreeMap<&str, usize> = BTreeMap::new();
    for var in skipped.values() {
        *by_var.entry(var).or_default() += 1;
    }
    let reasons: Vec<String> = by_var
        .iter()
        .map(|(var, n)| format!("{n} without {var}"))
        .collect();
    let line = format!(
        "\nSKIPPED: {} test{} did not run, in all or in part ({}); scripts/test.sh starts the emulators and the registry and runs every test\n",
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" },
        reasons.join(", ")
    );
    // SAFETY: writing a valid buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}
