//! The jobs the bench creates: bunches of specs in an in-memory store,
//! written the way the driver writes them, and create bodies shaped like
//! `../shared/samples/create-v7.json` (format 7, one secret, one variable).

use std::sync::Arc;

use axum::body::Bytes;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::json;

/// The batch every bench job belongs to.
pub const BATCH_ID: i64 = 1;
/// Jobs per bunch (the driver writes specs in bunches).
const BUNCH_JOBS: i64 = 100;

/// The bunch token of the bunch starting at `start_job_id`.
fn token(start_job_id: i64) -> String {
    format!("bench{start_job_id:011}")
}

/// Whether job `job_id`'s spec is written corrupt (not JSON), when the
/// bench asks for corrupt specs: one job in 20 (5 %).
pub fn is_corrupt(job_id: i64) -> bool {
    job_id % 20 == 7
}

/// An in-memory store holding the specs of jobs `0..jobs` of
/// [`BATCH_ID`], under `specs/`; with `corrupt`, the [`is_corrupt`] ones
/// are cut in half.
pub fn write_specs(jobs: i64, corrupt: bool) -> Arc<dyn ObjectStore> {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let writer = SpecStore::on_caller_runtime(
        store.clone(),
        Path::from("specs"),
        SpecLoadConfig::default(),
    );
    runtime.block_on(async {
        for start in (0..jobs).step_by(BUNCH_JOBS as usize) {
            let specs: Vec<Vec<u8>> = (start..(start + BUNCH_JOBS).min(jobs))
                .map(|job_id| {
                    let spec = spec_json(job_id);
                    if corrupt && is_corrupt(job_id) {
                        spec[..spec.len() / 2].to_vec()
                    } else {
                        spec
                    }
                })
                .collect();
            writer
                .write_bunch(BATCH_ID, &token(start), &specs)
                .await
                .expect("an in-memory put");
        }
    });
    store
}

/// Job `job_id`'s spec, like the driver's: a container command, 250 mcpu.
fn spec_json(job_id: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "always_run": false,
        "job_id": job_id,
        "parent_ids": [],
        "process": {"type": "docker", "image": "ubuntu:24.04", "command": ["true"]},
        "resources": {"cores_mcpu": 250, "memory_bytes": 268435456, "storage_gib": 0, "preemptible": true},
        "env": [{"name": "STAGE", "value": "bench"}],
        "input_files": [],
        "output_files": [],
        "timeout": null,
    }))
    .expect("JSON")
}

/// The create bodies of the first attempts of jobs `0..jobs`.
pub fn first_attempts(jobs: i64) -> Arc<Vec<Bytes>> {
    Arc::new((0..jobs).map(|j| create_body(j, 0)).collect())
}

/// The create body of attempt number `attempt` (0, 1, ...) of job `job_id`.
pub fn create_body(job_id: i64, attempt: u32) -> Bytes {
    let start = job_id - job_id % BUNCH_JOBS;
    Bytes::from(
        serde_json::to_vec(&json!({
            "batch_id": BATCH_ID,
            "job_id": job_id,
            "format_version": 7,
            "token": token(start),
            "start_job_id": start,
            "user": "bench-user",
            "gsa_key": {"key.json": "eyJ0eXBlIjogInNlcnZpY2VfYWNjb3VudCJ9"},
            "job_spec": {
                "attempt_id": format!("a{attempt}x{job_id}"),
                "job_group_id": 0,
                "secrets": [{
                    "namespace": "default",
                    "name": "bench-user-gsa-key",
                    "mount_path": "/gsa-key",
                    "mount_in_copy": true,
                    "data": {"key.json": "eyJ0eXBlIjogInNlcnZpY2VfYWNjb3VudCJ9"}
                }],
                "env": [{"name": "HAIL_REGION", "value": "us-central1"}]
            },
            "queue_time": 1700000000000_i64
        }))
        .expect("JSON"),
    )
}
