//! Property: whatever a bunch's bytes are (truncated, flipped, reversed or
//! out-of-range offsets, invalid UTF-8, JSON that is not an object, another
//! job's id, missing objects), every well-formed create answers 200, no
//! endpoint answers 5xx, and every job ends as an independent oracle
//! predicts: `succeeded` for an intact good spec, otherwise `Errored` with
//! the right kind, reported to the driver exactly once with state `error`.
//!
//! And: extra keys anywhere (at any level of a good spec, in the create
//! body, in its `job_spec`) never make a create fail or a good spec error:
//! the job runs, and each extra spec key is one warning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use batch_worker::spec_store::SpecLoadConfig;
use batch_worker_model::{ErrorKind, JobState, Outcome};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{create_body, Harness};

/// The spec size cap in these tests, in bytes.
const CAP: u64 = 2048;

#[derive(Debug, Clone)]
enum SpecDamage {
    None,
    NotUtf8(usize),
    Truncate(usize),
    NotObject(&'static str),
    WrongJobId(i64),
    Garbage(Vec<u8>),
    NoCommand,
    Oversize,
    Empty,
}

#[derive(Debug, Clone)]
enum IndexDamage {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Swap(usize),
    PastEnd(usize, u64),
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
enum Missing {
    None,
    Specs,
    Index,
    Both,
}

#[derive(Debug, Clone)]
struct Case {
    specs: Vec<SpecDamage>,
    index: IndexDamage,
    missing: Missing,
    /// Also create the job just past the bunch's end.
    one_past_the_end: bool,
    /// A token that may not be well-formed (None: the bunch's own).
    token: Option<String>,
}

fn spec_damage() -> impl Strategy<Value = SpecDamage> {
    prop_oneof![
        4 => Just(SpecDamage::None),
        1 => any::<usize>().prop_map(SpecDamage::NotUtf8),
        1 => any::<usize>().prop_map(SpecDamage::Truncate),
        1 => prop::sample::select(vec!["[]", "42", "\"s\"", "null", "true", "[{\"job_id\":1}]"]).prop_map(SpecDamage::NotObject),
        1 => (1i64..5).prop_map(SpecDamage::WrongJobId),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(SpecDamage::Garbage),
        1 => Just(SpecDamage::NoCommand),
        1 => Just(SpecDamage::Oversize),
        1 => Just(SpecDamage::Empty),
    ]
}

fn index_damage() -> impl Strategy<Value = IndexDamage> {
    prop_oneof![
        3 => Just(IndexDamage::None),
        1 => any::<usize>().prop_map(IndexDamage::Truncate),
        1 => (any::<usize>(), 1u8..=255).prop_map(|(at, x)| IndexDamage::Flip(at, x)),
        1 => any::<usize>().prop_map(IndexDamage::Swap),
        1 => (any::<usize>(), 1u64..1_000_000).prop_map(|(s, e)| IndexDamage::PastEnd(s, e)),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(IndexDamage::Garbage),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(spec_damage(), 1..6),
        index_damage(),
        prop_oneof![6 => Just(Missing::None), 1 => Just(Missing::Specs), 1 => Just(Missing::Index), 1 => Just(Missing::Both)],
        any::<bool>(),
        prop_oneof![6 => Just(None), 1 => "[ -~]{0,12}".prop_map(Some)],
    )
        .prop_map(|(specs, index, missing, one_past_the_end, token)| Case {
            specs,
            index,
            missing,
            one_past_the_end,
            token,
        })
}

fn good_spec(job_id: i64) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"job_id": job_id, "process": {"type": "docker", "command": ["true"]}}),
    )
    .unwrap()
}

fn damaged_spec(job_id: i64, damage: &SpecDamage) -> Vec<u8> {
    let good = good_spec(job_id);
    match damage {
        SpecDamage::None => good,
        SpecDamage::NotUtf8(at) => {
            let mut b = good;
            let at = at % b.len();
            b[at] = 0xff;
            b
        }
        SpecDamage::Truncate(len) => good[..len % good.len()].to_vec(),
        SpecDamage::NotObject(text) => text.as_bytes().to_vec(),
        SpecDamage::WrongJobId(d) => good_spec(job_id + d),
        SpecDamage::Garbage(bytes) => bytes.clone(),
        SpecDamage::NoCommand => serde_json::to_vec(
            &json!({"job_id": job_id, "process": {"type": "docker", "command": []}}),
        )
        .unwrap(),
        SpecDamage::Oversize => {
            let mut v: Value = serde_json::from_slice(&good).unwrap();
            v["padding"] = json!("x".repeat(CAP as usize));
            serde_json::to_vec(&v).unwrap()
        }
        SpecDamage::Empty => Vec::new(),
    }
}

fn damage_index(mut index: Vec<u8>, damage: &IndexDamage) -> Vec<u8> {
    let slots = index.len() / 8;
    match damage {
        IndexDamage::None => {}
        IndexDamage::Truncate(len) => index.truncate(len % index.len()),
        IndexDamage::Flip(at, x) => {
            let at = at % index.len();
            index[at] ^= x;
        }
        IndexDamage::Swap(slot) => {
            let s = slot % (slots - 1);
            let (a, b) = (
                index[s * 8..s * 8 + 8].to_vec(),
                index[s * 8 + 8..s * 8 + 16].to_vec(),
            );
            index[s * 8..s * 8 + 8].copy_from_slice(&b);
            index[s * 8 + 8..s * 8 + 16].copy_from_slice(&a);
        }
        IndexDamage::PastEnd(slot, extra) => {
            let s = 1 + slot % (slots - 1);
            let v = u64::from_le_bytes(index[s * 8..s * 8 + 8].try_into().unwrap());
            index[s * 8..s * 8 + 8].copy_from_slice(&(v + extra).to_le_bytes());
        }
        IndexDamage::Garbage(bytes) => index = bytes.clone(),
    }
    index
}

/// What job `slot` of the bunch must end as, from the final bytes alone.
fn oracle(
    index: Option<&[u8]>,
    specs: Option<&[u8]>,
    slot: usize,
    good: Option<&[u8]>,
) -> Result<(), ErrorKind> {
    let index = index.ok_or(ErrorKind::SpecMissing)?;
    let entry = index
        .get(slot * 8..slot * 8 + 16)
        .ok_or(ErrorKind::SpecCorrupt)?;
    let start = u64::from_le_bytes(entry[..8].try_into().unwrap());
    let end = u64::from_le_bytes(entry[8..].try_into().unwrap());
    if end <= start || end - start > CAP {
        return Err(ErrorKind::SpecCorrupt);
    }
    let specs = specs.ok_or(ErrorKind::SpecMissing)?;
    let bytes = specs
        .get(start as usize..end as usize)
        .ok_or(ErrorKind::SpecCorrupt)?;
    match good {
        Some(good) if good == bytes => Ok(()),
        _ => Err(ErrorKind::SpecCorrupt),
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    harness: Harness,
    store: Arc<dyn ObjectStore>,
    next_batch: AtomicI64,
    /// Keeps a file store's directory alive.
    _dir: Option<tempfile::TempDir>,
}

impl World {
    /// One worker for every case of a test (each case uses its own batch id).
    fn new(store: Arc<dyn ObjectStore>, root: Path, dir: Option<tempfile::TempDir>) -> World {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = SpecLoadConfig {
            max_spec_bytes: CAP,
            ..SpecLoadConfig::default()
        };
        let harness = runtime.block_on(Harness::start(store.clone(), root, config));
        World {
            runtime,
            harness,
            store,
            next_batch: AtomicI64::new(1000),
            _dir: dir,
        }
    }
}

fn memory_world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World::new(Arc::new(InMemory::new()), Path::from("specs"), None))
}

/// Local files answer range reads past the end differently from memory
/// (errors rather than short reads), so the property runs on both.
fn file_world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        World::new(Arc::new(store), Path::from("specs"), Some(dir))
    })
}

/// A world over the emulator store named by `$var` (a root URL such as
/// `az://bw-test/specs`, set by `scripts/emulators.sh`), or `None` (the
/// test skips, recorded by [`crate::skips`]) when the variable is not set.
fn emulator_world(var: &'static str, cell: &'static OnceLock<World>) -> Option<&'static World> {
    let root = crate::skips::service_var(crate::skips::Service::Emulators, var)?;
    Some(cell.get_or_init(|| {
        let url = url::Url::parse(&root).unwrap_or_else(|e| panic!("{var}={root}: {e}"));
        let (store, path) =
            batch_worker::store::open_store(&url).unwrap_or_else(|e| panic!("{var}={root}: {e}"));
        // The emulator outlives a test run: a fresh prefix per run, so
        // a case's "missing" object is not one an earlier run wrote.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        World::new(store, path.join(format!("run{run}")), None)
    }))
}

fn azurite_world() -> Option<&'static World> {
    static WORLD: OnceLock<World> = OnceLock::new();
    emulator_world("BW_TEST_AZ_ROOT", &WORLD)
}

fn s3_world() -> Option<&'static World> {
    static WORLD: OnceLock<World> = OnceLock::new();
    emulator_world("BW_TEST_S3_ROOT", &WORLD)
}

async fn check(world: &World, case: Case) -> Result<(), TestCaseError> {
    let h = &world.harness;
    let batch_id = world.next_batch.fetch_add(1, Ordering::SeqCst);
    let start_job_id = 1 + batch_id % 7;
    let token = format!("bunch{batch_id}");
    let specs: Vec<Vec<u8>> = case
        .specs
        .iter()
        .enumerate()
        .map(|(i, d)| damaged_spec(start_job_id + i as i64, d))
        .collect();
    let keys = h
        .writer
        .write_bunch(batch_id, &token, &specs)
        .await
        .unwrap();
    let (data, index) = batch_worker::bunch::encode(&specs);
    let index = damage_index(index, &case.index);
    world
        .store
        .put(&keys.index, PutPayload::from(index.clone()))
        .await
        .unwrap();
    let (has_specs, has_index) = match case.missing {
        Missing::None => (true, true),
        Missing::Specs => (false, true),
        Missing::Index => (true, false),
        Missing::Both => (false, false),
    };
    if !has_specs {
        world.store.delete(&keys.specs).await.unwrap();
    }
    if !has_index {
        world.store.delete(&keys.index).await.unwrap();
    }

    let token_ok = case.token.as_ref().is_none_or(|t| {
        !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric())
    });
    let used_token = case.token.clone().unwrap_or(token.clone());
    let jobs = specs.len() + usize::from(case.one_past_the_end);
    let mut expected = HashMap::new();
    #[allow(clippy::needless_range_loop)] // slots run one past `specs`
    for slot in 0..jobs {
        let job_id = start_job_id + slot as i64;
        let (status, answer) = h
            .create(&create_body(batch_id, job_id, &used_token, start_job_id))
            .await;
        if !token_ok {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", answer);
            prop_assert_eq!(&answer["error"]["field"], &json!("token"));
            continue;
        }
        prop_assert_eq!(status, StatusCode::OK, "{}", answer);
        let want = if case.token.as_ref().is_some_and(|t| *t != token) {
            Err(ErrorKind::SpecMissing)
        } else {
            // Whatever slot the bytes came from, they run if they are this
            // job's good spec (a swapped index can point a job at the
            // spec another slot wrote for it, e.g. with WrongJobId).
            let good = good_spec(job_id);
            oracle(
                has_index.then_some(&index[..]),
                has_specs.then_some(&data[..]),
                slot,
                Some(&good),
            )
        };
        expected.insert(job_id, want);
    }

    for (&job_id, want) in &expected {
        let state = h.wait_final(batch_id, job_id).await;
        match want {
            Ok(()) => prop_assert_eq!(
                &state,
                &JobState::Done {
                    outcome: Outcome::Succeeded
                }
            ),
            Err(kind) => prop_assert!(
                matches!(&state, JobState::Errored { kind: k, .. } if k == kind),
                "job {}: want {:?}, got {:?}",
                job_id,
                kind,
                state
            ),
        }
        for path in ["status", "events", "log/main"] {
            let (status, _) = h
                .get(&format!(
                    "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/{path}"
                ))
                .await;
            prop_assert_eq!(status, StatusCode::OK, "{}", path);
        }
        prop_assert_eq!(h.cancel(batch_id, job_id).await.0, StatusCode::OK);
    }
    // Exactly one job_complete per job, in the state the status shows.
    let reported = expected.len();
    let mut changes = h.driver.changes();
    tokio::time::timeout(crate::support::HANG_GUARD, async {
        while h
            .driver
            .received()
            .complete
            .iter()
            .filter(|c| c.status.batch_id == batch_id)
            .count()
            < reported
        {
            changes.changed().await.unwrap();
        }
    })
    .await
    .map_err(|_| TestCaseError::fail("job_complete reports missing"))?;
    let complete: Vec<_> = h
        .driver
        .received()
        .complete
        .into_iter()
        .filter(|c| c.status.batch_id == batch_id)
        .collect();
    prop_assert_eq!(complete.len(), reported);
    for c in complete {
        let want = if expected[&c.status.job_id].is_ok() {
            "succeeded"
        } else {
            "error"
        };
        prop_assert_eq!(c.status.state.as_str(), want, "job {}", c.status.job_id);
    }
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/spec_properties.txt",
        ))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn any_bunch_bytes_in_memory_end_in_the_oracles_state_and_never_a_5xx(case in case()) {
        let world = memory_world();
        world.runtime.block_on(check(world, case))?;
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn any_bunch_bytes_in_local_files_end_in_the_oracles_state_and_never_a_5xx(case in case()) {
        let world = file_world();
        world.runtime.block_on(check(world, case))?;
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// The same property against Azurite, the Azure Blob emulator.
    #[test]
    fn any_bunch_bytes_in_azure_blob_end_in_the_oracles_state_and_never_a_5xx(case in case()) {
        let Some(world) = azurite_world() else { return Ok(()) };
        world.runtime.block_on(check(world, case))?;
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// The same property against moto's S3 server.
    #[test]
    fn any_bunch_bytes_in_s3_end_in_the_oracles_state_and_never_a_5xx(case in case()) {
        let Some(world) = s3_world() else { return Ok(()) };
        world.runtime.block_on(check(world, case))?;
    }
}

/// Where an extra key goes: a level of the spec, or the create body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Place {
    Top,
    Process,
    Resources,
    Env0,
    /// The create body (not the spec: no warning).
    Body,
    /// The create body's `job_spec` (per-attempt fields for a bunch job:
    /// not the spec, no warning).
    JobSpec,
}

impl Place {
    /// The spec path prefix of a key placed here; `None` outside the spec.
    fn prefix(self) -> Option<&'static str> {
        match self {
            Place::Top => Some(""),
            Place::Process => Some("process."),
            Place::Resources => Some("resources."),
            Place::Env0 => Some("env[0]."),
            Place::Body | Place::JobSpec => None,
        }
    }

    /// Whether `key` is a field already known here (not an extra one).
    fn knows(self, key: &str) -> bool {
        use batch_worker::spec_fields::{Shape, SPEC_FIELDS};
        let inner = |name: &str| {
            SPEC_FIELDS
                .iter()
                .find(|f| f.name == name)
                .map(|f| match f.shape {
                    Shape::Object(inner) | Shape::List(inner) => inner,
                    _ => &[],
                })
                .unwrap()
        };
        let top = SPEC_FIELDS.iter().any(|f| f.name == key);
        match self {
            Place::Top | Place::JobSpec => top,
            Place::Process => inner("process").iter().any(|f| f.name == key),
            Place::Resources => inner("resources").iter().any(|f| f.name == key),
            Place::Env0 => inner("env").iter().any(|f| f.name == key),
            Place::Body => {
                top || [
                    "batch_id",
                    "job_id",
                    "format_version",
                    "token",
                    "start_job_id",
                    "user",
                    "gsa_key",
                    "job_spec",
                    "queue_time",
                ]
                .contains(&key)
            }
        }
    }
}

fn extra_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
        ("[a-z]{1,6}", any::<i32>()).prop_map(|(k, v)| json!({ k: [v] })),
    ]
}

/// Extra keys, each with where it goes; known names are dropped, and a
/// key placed twice at one place counts once.
fn extras() -> impl Strategy<Value = Vec<(Place, String, Value)>> {
    let place = prop::sample::select(vec![
        Place::Top,
        Place::Process,
        Place::Resources,
        Place::Env0,
        Place::Body,
        Place::JobSpec,
    ]);
    prop::collection::vec(
        (place, "[A-Za-z_][A-Za-z0-9_. \\[\\]-]{0,15}", extra_value()),
        0..20,
    )
    .prop_map(|extras| {
        let mut seen = std::collections::HashSet::new();
        extras
            .into_iter()
            .filter(|(place, key, _)| !place.knows(key) && seen.insert((*place, key.clone())))
            .collect()
    })
}

/// A good spec with `extras` placed in it (those of the spec's levels),
/// and the warnings' paths they must give, sorted.
fn spec_with(job_id: i64, extras: &[(Place, String, Value)]) -> (Value, Vec<String>) {
    let mut spec = json!({
        "job_id": job_id,
        "process": {"type": "docker", "command": ["true"]},
        "resources": {"cores_mcpu": 250},
        "env": [{"name": "A", "value": "1"}],
    });
    let mut paths = Vec::new();
    for (place, key, value) in extras {
        let target = match place {
            Place::Top => &mut spec,
            Place::Process => &mut spec["process"],
            Place::Resources => &mut spec["resources"],
            Place::Env0 => &mut spec["env"][0],
            Place::Body | Place::JobSpec => continue,
        };
        target[key.as_str()] = value.clone();
        paths.push(format!("{}{key}", place.prefix().unwrap()));
    }
    paths.sort();
    (spec, paths)
}

proptest! {
    #![proptest_config(config(256))]

    /// Parsing alone: a good spec with extra keys parses, and its unknown
    /// fields are exactly the extra keys (at most 16 kept, the rest counted).
    #[test]
    fn extra_keys_never_make_a_good_spec_error_and_each_is_one_warning(extras in extras()) {
        let (spec, paths) = spec_with(3, &extras);
        let parsed = batch_worker::job_spec::JobSpec::parse(spec.to_string().as_bytes(), 3);
        let parsed = parsed.map_err(|e| TestCaseError::fail(format!("{e}: {spec}")))?;
        let found = &parsed.unknown_fields;
        prop_assert_eq!(found.fields().len(), paths.len().min(16));
        prop_assert_eq!(found.fields().len() + found.omitted() as usize, paths.len());
        if paths.len() <= 16 {
            let mut shown: Vec<String> = found.fields().iter().map(|f| f.path.clone()).collect();
            shown.sort();
            prop_assert_eq!(shown, paths);
        }
    }
}

async fn check_extras(
    world: &World,
    extras: Vec<(Place, String, Value)>,
) -> Result<(), TestCaseError> {
    let h = &world.harness;
    let batch_id = world.next_batch.fetch_add(1, Ordering::SeqCst);
    let token = format!("extras{batch_id}");
    let (spec, paths) = spec_with(1, &extras);
    h.writer
        .write_bunch(batch_id, &token, &[serde_json::to_vec(&spec).unwrap()])
        .await
        .unwrap();
    let mut body = create_body(batch_id, 1, &token, 1);
    for (place, key, value) in &extras {
        match place {
            Place::Body => body[key.as_str()] = value.clone(),
            Place::JobSpec => body["job_spec"][key.as_str()] = value.clone(),
            _ => {}
        }
    }
    let (status, answer) = h.create(&body).await;
    prop_assert_eq!(status, StatusCode::OK, "{}", answer);
    prop_assert_eq!(
        h.wait_final(batch_id, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let (_, status) = h.status(batch_id, 1).await;
    let extension = &status["batch_worker"];
    let shown = extension["spec_warnings"].as_array().map_or(0, Vec::len);
    prop_assert_eq!(shown, paths.len().min(16), "{:#}", status);
    let omitted = extension["spec_warnings_omitted"].as_u64().unwrap_or(0) as usize;
    prop_assert_eq!(shown + omitted, paths.len());
    Ok(())
}

proptest! {
    #![proptest_config(config(32))]

    /// Through a worker: a create with extra keys answers 200, its good
    /// spec runs to success, and the status shows one warning per extra
    /// spec key.
    #[test]
    fn extra_keys_never_make_a_create_fail_and_the_job_succeeds(extras in extras()) {
        let world = memory_world();
        world.runtime.block_on(check_extras(world, extras))?;
    }
}
