//! A fault-injecting object store: wraps any store and, per call, waits a
//! drawn latency, then may fail it (a transient error, not found), hang
//! it, or damage what a read returns (cut short, one byte flipped).
//!
//! Every decision is a pure function of the plan's seed, the operation,
//! the object's path, the byte ranges asked for, and how many times that
//! operation was called on them before: a run repeats exactly for a seed, even when tasks reach
//! the store in a different order. Used by the tests (the simulation and
//! the spec property tests), the demo (`--store-faults`) and the
//! benchmarks; [`with_control_plane`] (a slow token service) is the plan
//! with latency only.
//!
//! This file is long (about 550 lines of code, 770 with tests): every kind of injected
//! fault must stay seeded the same way, so they live together.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

/// The longest latency a [`FaultStore`] adds to one call.
pub const MAX_LATENCY: Duration = Duration::from_secs(24 * 3600);

/// Latencies from this long on are listed by [`FaultStore::injected`]
/// (kind `slow`): they alone may push a read past its deadline.
pub const SLOW_LATENCY: Duration = Duration::from_secs(1);

/// The spread of the token wait of [`with_control_plane`]: log-normal with
/// σ = 0.75, so p50 is the median given and p99 about 5.7 times it.
pub const TOKEN_DELAY_SIGMA: f64 = 0.75;

/// What a [`FaultStore`] does to calls. Rates are probabilities per call,
/// each in `[0, 1]`, and together at most 1: one call gets at most one
/// fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Seed of every decision.
    pub seed: u64,
    /// Median latency added before each call, in ms (0: none).
    pub latency_ms: u64,
    /// Spread of the latency: log-normal σ (0: always `latency_ms`).
    pub latency_sigma: f64,
    /// Calls that fail with a transient (retryable) error.
    pub error_rate: f64,
    /// Calls that never answer (until the caller gives up and drops them).
    pub hang_rate: f64,
    /// Reads and heads answered "not found".
    pub not_found_rate: f64,
    /// Reads whose bytes are cut short (a random length, possibly 0).
    pub short_read_rate: f64,
    /// Reads with one byte flipped (all bits of one random byte).
    pub flip_rate: f64,
}

impl Default for FaultPlan {
    /// No latency, no faults.
    fn default() -> Self {
        FaultPlan {
            seed: 0,
            latency_ms: 0,
            latency_sigma: 0.0,
            error_rate: 0.0,
            hang_rate: 0.0,
            not_found_rate: 0.0,
            short_read_rate: 0.0,
            flip_rate: 0.0,
        }
    }
}

/// A [`FaultPlan`] text that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad store fault plan {text:?}: {reason} (expected comma-separated NAME=VALUE with names seed, latency_ms, sigma, error, hang, not_found, short_read, flip; e.g. \"seed=7,latency_ms=200,sigma=0.75,error=0.05\")")]
pub struct FaultPlanError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for FaultPlan {
    type Err = FaultPlanError;

    /// Reads `seed=7,latency_ms=200,sigma=0.75,error=0.05,hang=0.01,
    /// not_found=0.01,short_read=0.01,flip=0.01`; names left out are 0.
    fn from_str(text: &str) -> Result<FaultPlan, FaultPlanError> {
        let bad = |reason: String| FaultPlanError {
            text: text.to_owned(),
            reason,
        };
        let mut plan = FaultPlan::default();
        let mut seen = std::collections::HashSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} has no '='")))?;
            let (name, value) = (name.trim(), value.trim());
            if !seen.insert(name) {
                return Err(bad(format!("{name} is given twice")));
            }
            let number = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    // -0 is 0.
                    .map(|v| v + 0.0)
                    .ok_or_else(|| bad(format!("{name}: {value:?} is not a number >= 0")))
            };
            let rate = || {
                number().and_then(|v| {
                    (v <= 1.0)
                        .then_some(v)
                        .ok_or_else(|| bad(format!("{name}: {value} is not a rate in [0, 1]")))
                })
            };
            match name {
                "seed" => {
                    plan.seed = value
                        .parse()
                        .map_err(|_| bad(format!("seed: {value:?} is not an integer")))?
                }
                "latency_ms" => {
                    plan.latency_ms = value
                        .parse()
                        .map_err(|_| bad(format!("latency_ms: {value:?} is not an integer")))?
                }
                "sigma" => plan.latency_sigma = number()?,
                "error" => plan.error_rate = rate()?,
                "hang" => plan.hang_rate = rate()?,
                "not_found" => plan.not_found_rate = rate()?,
                "short_read" => plan.short_read_rate = rate()?,
                "flip" => plan.flip_rate = rate()?,
                other => return Err(bad(format!("unknown name {other:?}"))),
            }
        }
        if seen.is_empty() {
            return Err(bad("the plan is empty".into()));
        }
        let total = plan.error_rate
            + plan.hang_rate
            + plan.not_found_rate
            + plan.short_read_rate
            + plan.flip_rate;
        if total > 1.0 {
            return Err(bad(format!("the rates add up to {total}, more than 1")));
        }
        Ok(plan)
    }
}

impl fmt::Display for FaultPlan {
    /// The text [`FaultPlan::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={},latency_ms={},sigma={},error={},hang={},not_found={},short_read={},flip={}",
            self.seed,
            self.latency_ms,
            self.latency_sigma,
            self.error_rate,
            self.hang_rate,
            self.not_found_rate,
            self.short_read_rate,
            self.flip_rate
        )
    }
}

/// The fault one call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Error,
    Hang,
    NotFound,
    /// Keep this fraction (in 1/65536) of the bytes.
    Short(u16),
    /// Flip the byte at this fraction (in 1/65536) of the length.
    Flip(u16),
}

/// What kind of call: decides which faults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Get,
    Head,
    Put,
    List,
    Copy,
}

/// Operation, path and byte ranges of a call.
type CallKey = (Op, String, Vec<Range<u64>>);

/// One fault a [`FaultStore`] injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// The object's path.
    pub path: String,
    /// The byte ranges asked for (empty: the whole object).
    pub ranges: Vec<Range<u64>>,
    /// What was done: `error`, `hang`, `not_found`, `short_read`, `flip`,
    /// or `slow` (a latency of [`SLOW_LATENCY`] or more, with no other
    /// fault).
    pub kind: &'static str,
}

/// How many calls a [`FaultStore`] saw and damaged, by fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Calls that went through the plan.
    pub calls: u64,
    /// Transient errors injected.
    pub errors: u64,
    /// Calls hung.
    pub hangs: u64,
    /// "Not found" answers injected.
    pub not_found: u64,
    /// Reads cut short.
    pub short_reads: u64,
    /// Reads with a flipped byte.
    pub flips: u64,
    /// Calls with no other fault that waited [`SLOW_LATENCY`] or more.
    pub slow: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    slow: AtomicU64,
    errors: AtomicU64,
    hangs: AtomicU64,
    not_found: AtomicU64,
    short_reads: AtomicU64,
    flips: AtomicU64,
}

/// Wraps a store and injects the faults of a [`FaultPlan`]. Streaming
/// calls (`list`, `delete_stream`) pass through untouched.
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
    latency: Option<LogNormal<f64>>,
    /// Calls so far per operation, path and byte range.
    seen: Mutex<HashMap<CallKey, u64>>,
    counters: Counters,
    /// Every fault injected, in order (kept in memory: for tests and demos).
    injected: Mutex<Vec<InjectedFault>>,
}

impl FaultStore {
    /// `inner` with `plan`'s faults.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> FaultStore {
        let latency = (plan.latency_ms > 0).then(|| {
            LogNormal::new((plan.latency_ms as f64).ln(), plan.latency_sigma).unwrap_or_else(|_| {
                LogNormal::new((plan.latency_ms as f64).ln(), 0.0).expect("σ 0")
            })
        });
        FaultStore {
            inner,
            plan,
            latency,
            seen: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            injected: Mutex::new(Vec::new()),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Calls and faults so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.counters;
        FaultStats {
            calls: c.calls.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            hangs: c.hangs.load(Ordering::Relaxed),
            not_found: c.not_found.load(Ordering::Relaxed),
            short_reads: c.short_reads.load(Ordering::Relaxed),
            flips: c.flips.load(Ordering::Relaxed),
            slow: c.slow.load(Ordering::Relaxed),
        }
    }

    /// Every fault injected so far, in order: which object and ranges
    /// each hit, so that a test can tell which jobs a fault could explain.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.injected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latency and fault of the next `op` call on `path` for `ranges`
    /// (empty: the whole object). Keyed by the ranges too, so that readers
    /// of different parts of one object (jobs of one bunch) do not shift
    /// each other's decisions.
    fn decide(&self, op: Op, path: &Path, ranges: &[Range<u64>]) -> (Duration, Fault) {
        let n = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let count = seen
                .entry((op, path.to_string(), ranges.to_vec()))
                .or_insert(0);
            *count += 1;
            *count
        };
        // SipHash with fixed keys: the same on every run and machine.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.plan.seed, 0x6261_7463_6877_6b72);
        (op, path.as_ref(), ranges, n).hash(&mut hasher);
        let mut rng = StdRng::seed_from_u64(hasher.finish());
        // A heavy tail may draw more than a Duration holds: at most a day.
        let latency = self.latency.map_or(Duration::ZERO, |d| {
            Duration::try_from_secs_f64(d.sample(&mut rng) / 1000.0)
                .unwrap_or(MAX_LATENCY)
                .min(MAX_LATENCY)
        });
        let draw: f64 = rng.random();
        let at: u16 = rng.random();
        let p = &self.plan;
        let reads = matches!(op, Op::Get);
        let mut edge = 0.0;
        let mut hit = |rate: f64, applies: bool| {
            edge += if applies { rate } else { 0.0 };
            applies && draw < edge
        };
        let fault = if hit(p.hang_rate, true) {
            Fault::Hang
        } else if hit(p.error_rate, true) {
            Fault::Error
        } else if hit(p.not_found_rate, matches!(op, Op::Get | Op::Head)) {
            Fault::NotFound
        } else if hit(p.short_read_rate, reads) {
            Fault::Short(at)
        } else if hit(p.flip_rate, reads) {
            Fault::Flip(at)
        } else {
            Fault::None
        };
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let counted = match fault {
            Fault::None if latency >= SLOW_LATENCY => Some((&self.counters.slow, "slow")),
            Fault::None => None,
            Fault::Error => Some((&self.counters.errors, "error")),
            Fault::Hang => Some((&self.counters.hangs, "hang")),
            Fault::NotFound => Some((&self.counters.not_found, "not_found")),
            Fault::Short(_) => Some((&self.counters.short_reads, "short_read")),
            Fault::Flip(_) => Some((&self.counters.flips, "flip")),
        };
        if let Some((counter, kind)) = counted {
            counter.fetch_add(1, Ordering::Relaxed);
            self.injected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(InjectedFault {
                    path: path.to_string(),
                    ranges: ranges.to_vec(),
                    kind,
                });
        }
        (latency, fault)
    }

    /// Waits the call's latency, then fails or hangs it if so decided;
    /// returns the fault left for the read's bytes.
    async fn enter(
        &self,
        op: Op,
        path: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Fault> {
        let (latency, fault) = self.decide(op, path, ranges);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match fault {
            Fault::Hang => std::future::pending().await,
            Fault::Error => Err(object_store::Error::Generic {
                store: "FaultStore",
                source: format!("injected transient error on {path}").into(),
            }),
            Fault::NotFound => Err(object_store::Error::NotFound {
                path: path.to_string(),
                source: "injected: not found".into(),
            }),
            other => Ok(other),
        }
    }
}

/// `bytes` damaged by `fault` (unchanged for the others).
fn damage(bytes: Bytes, fault: Fault) -> Bytes {
    let at = |fraction: u16| (bytes.len() as u64 * u64::from(fraction) / 65_536) as usize;
    match fault {
        Fault::Short(keep) => bytes.slice(..at(keep)),
        Fault::Flip(position) if !bytes.is_empty() => {
            let mut copy = bytes.to_vec();
            copy[at(position)] ^= 0xff;
            Bytes::from(copy)
        }
        _ => bytes,
    }
}

/// `store` behind a slow control plane (a seeded log-normal wait of median
/// `median_ms`, σ [`TOKEN_DELAY_SIGMA`], before every request), or
/// unchanged when `median_ms` is 0.
pub fn with_control_plane(
    store: Arc<dyn ObjectStore>,
    median_ms: u64,
    seed: u64,
) -> Arc<dyn ObjectStore> {
    if median_ms == 0 {
        return store;
    }
    let plan = FaultPlan {
        seed,
        latency_ms: median_ms,
        latency_sigma: TOKEN_DELAY_SIGMA,
        ..FaultPlan::default()
    };
    Arc::new(FaultStore::new(store, plan))
}

impl fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStore")
            .field("inner", &self.inner.to_string())
            .field("plan", &self.plan)
            .finish()
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (faults: {})", self.inner, self.plan)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.enter(Op::Put, location, &[]).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.enter(Op::Put, location, &[]).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let range: Vec<Range<u64>> = match &options.range {
            Some(GetRange::Bounded(r)) => Vec::from([r.clone()]),
            Some(GetRange::Offset(o)) => Vec::from([Range {
                start: *o,
                end: u64::MAX,
            }]),
            Some(GetRange::Suffix(n)) => Vec::from([Range {
                start: u64::MAX - n,
                end: u64::MAX,
            }]),
            None => Vec::new(),
        };
        let fault = self.enter(op, location, &range).await?;
        let result = self.inner.get_opts(location, options).await?;
        if fault == Fault::None {
            return Ok(result);
        }
        let (meta, range, attributes, extensions) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
            result.extensions.clone(),
        );
        let bytes = damage(result.bytes().await?, fault);
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let fault = self.enter(Op::Get, location, ranges).await?;
        let all = self.inner.get_ranges(location, ranges).await?;
        Ok(all.into_iter().map(|b| damage(b, fault)).collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.enter(Op::List, prefix.unwrap_or(&Path::default()), &[])
            .await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.enter(Op::Copy, to, &[]).await?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    fn store(plan: FaultPlan) -> (Arc<InMemory>, FaultStore) {
        let inner = Arc::new(InMemory::new());
        (inner.clone(), FaultStore::new(inner, plan))
    }

    fn latencies(seed: u64, n: usize) -> Vec<Duration> {
        let (_, store) = store(FaultPlan {
            seed,
            latency_ms: 1000,
            latency_sigma: TOKEN_DELAY_SIGMA,
            ..FaultPlan::default()
        });
        (0..n)
            .map(|i| {
                store
                    .decide(Op::Get, &Path::from(format!("k{}", i % 7)), &[])
                    .0
            })
            .collect()
    }

    #[test]
    fn latencies_repeat_for_a_seed_and_have_a_heavy_tail() {
        assert_eq!(latencies(7, 50), latencies(7, 50));
        assert_ne!(latencies(7, 50), latencies(8, 50));
        let mut all = latencies(1, 10_000);
        all.sort();
        let p50 = all[5_000].as_millis();
        let p99 = all[9_900].as_millis();
        assert!((850..1150).contains(&p50), "p50 {p50} ms");
        assert!((4000..7500).contains(&p99), "p99 {p99} ms");
    }

    #[test]
    fn decisions_depend_on_the_path_and_count_not_on_call_order() {
        let plan = FaultPlan {
            seed: 3,
            error_rate: 0.3,
            flip_rate: 0.3,
            ..FaultPlan::default()
        };
        let (_, a) = store(plan.clone());
        let (_, b) = store(plan);
        let first: Vec<_> = (0..20)
            .map(|_| a.decide(Op::Get, &Path::from("x"), &[]).1)
            .collect();
        // b sees other paths in between: x's decisions stay the same.
        let second: Vec<_> = (0..20)
            .map(|i| {
                b.decide(Op::Get, &Path::from(format!("y{i}")), &[]);
                b.decide(Op::Get, &Path::from("x"), &[Range { start: 0, end: 4 }]);
                b.decide(Op::Get, &Path::from("x"), &[]).1
            })
            .collect();
        assert_eq!(first, second);
        assert!(first.contains(&Fault::Error), "{first:?}");
        assert!(
            first.iter().any(|f| matches!(f, Fault::Flip(_))),
            "{first:?}"
        );
    }

    #[test]
    fn rates_come_out_as_planned_and_only_where_they_apply() {
        let plan: FaultPlan = "seed=9,error=0.1,hang=0.05,not_found=0.1,short_read=0.1,flip=0.1"
            .parse()
            .unwrap();
        let (_, store) = store(plan);
        for i in 0..10_000 {
            store.decide(Op::Get, &Path::from(format!("r{i}")), &[]);
        }
        let reads = store.stats();
        for (count, rate) in [
            (reads.errors, 0.1),
            (reads.hangs, 0.05),
            (reads.not_found, 0.1),
            (reads.short_reads, 0.1),
            (reads.flips, 0.1),
        ] {
            let expected = rate * 10_000.0;
            assert!(
                (count as f64 - expected).abs() < expected * 0.2,
                "{reads:?}"
            );
        }
        for i in 0..1_000 {
            store.decide(Op::Put, &Path::from(format!("w{i}")), &[]);
        }
        let after = store.stats();
        assert_eq!(
            after.not_found, reads.not_found,
            "puts are never 'not found'"
        );
        assert_eq!(after.flips, reads.flips, "puts have no bytes to flip");
        assert!(after.errors > reads.errors);
        let injected = store.injected();
        let total = after.errors + after.hangs + after.not_found + after.short_reads + after.flips;
        assert_eq!(injected.len() as u64, total);
        assert!(injected
            .iter()
            .any(|f| f.path.starts_with('w') && f.kind == "error"));
    }

    #[test]
    fn plans_read_back_and_bad_ones_say_why() {
        let plan: FaultPlan = "seed=5, latency_ms=200, sigma=0.5, error=0.05, flip=0.01"
            .parse()
            .unwrap();
        assert_eq!(plan.to_string().parse::<FaultPlan>().unwrap(), plan);
        for (text, says) in [
            ("error=2", "not a rate"),
            ("error=0.6,hang=0.6", "add up to"),
            ("flop=0.1", "unknown name \"flop\""),
            ("seed", "has no '='"),
            ("latency_ms=-1", "not an integer"),
            ("error=0.1,error=0.2", "error is given twice"),
            (" , ", "the plan is empty"),
        ] {
            let e = text.parse::<FaultPlan>().unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_damaged_delayed_and_failed_as_decided() {
        let (inner, store) = store(FaultPlan {
            seed: 11,
            latency_ms: 2000,
            latency_sigma: TOKEN_DELAY_SIGMA,
            short_read_rate: 0.25,
            flip_rate: 0.25,
            error_rate: 0.25,
            ..FaultPlan::default()
        });
        let original = Bytes::from(vec![7u8; 1000]);
        inner
            .put(&Path::from("k"), original.clone().into())
            .await
            .unwrap();
        let began = tokio::time::Instant::now();
        let mut seen = (0, 0, 0, 0);
        for _ in 0..200 {
            match store.get(&Path::from("k")).await {
                Err(e) => {
                    assert!(e.to_string().contains("injected"), "{e}");
                    seen.0 += 1;
                }
                Ok(result) => {
                    let bytes = result.bytes().await.unwrap();
                    if bytes == original {
                        seen.1 += 1;
                    } else if bytes.len() < original.len() {
                        seen.2 += 1;
                    } else {
                        assert_eq!(bytes.iter().filter(|b| **b != 7).count(), 1);
                        seen.3 += 1;
                    }
                }
            }
        }
        assert!(
            seen.0 > 20 && seen.1 > 20 && seen.2 > 20 && seen.3 > 20,
            "{seen:?}"
        );
        assert!(
            began.elapsed() > Duration::from_secs(200),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(store.stats().calls, 200);
    }

    #[test]
    fn a_huge_latency_is_capped_not_a_panic() {
        let (_, store) = store("latency_ms=1,sigma=1000".parse().unwrap());
        for i in 0..100 {
            let (latency, _) = store.decide(Op::Get, &Path::from(format!("k{i}")), &[]);
            assert!(latency <= MAX_LATENCY);
        }
        assert!(store.stats().slow > 0);
        assert_eq!(
            "error=-0"
                .parse::<FaultPlan>()
                .unwrap()
                .error_rate
                .to_string(),
            "0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_answers_never() {
        let (inner, store) = store(FaultPlan {
            hang_rate: 1.0,
            ..FaultPlan::default()
        });
        inner
            .put(&Path::from("k"), Bytes::from_static(b"v").into())
            .await
            .unwrap();
        let path = Path::from("k");
        let read = tokio::time::timeout(Duration::from_secs(3600), store.get(&path));
        assert!(read.await.is_err());
        assert_eq!(store.stats().hangs, 1);
    }
}
