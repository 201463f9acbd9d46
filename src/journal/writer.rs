//! The journal writer: one thread takes framed records from every job, in
//! the order they were handed over, writes them in batches and makes each
//! batch durable once (group commit). What must follow a record — an
//! event's effects, a create's answer — runs after its batch is durable.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// How durable a record is before what follows it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "lower")]
pub enum Durability {
    /// `fdatasync` after every batch: survives a power loss.
    Fsync,
    /// Written to the operating system only: survives the worker's crash,
    /// not the machine's.
    Flush,
}

/// Most records written as one batch.
const MAX_BATCH: usize = 4096;

/// What runs after a record's batch is written; `true` when it is durable.
pub type AfterWrite = Box<dyn FnOnce(bool) + Send>;

struct Append {
    bytes: Vec<u8>,
    then: AfterWrite,
}

/// Hands records to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<Append>,
    path: PathBuf,
}

impl JournalWriter {
    /// Opens (creating, with its header, if absent) the journal file at
    /// `path`, cut to `valid_bytes` when given (dropping a torn tail), and
    /// starts the writer thread. Callbacks run on that thread, inside
    /// `runtime` (so they may spawn tasks).
    ///
    /// # Errors
    /// The file cannot be opened, cut, or written.
    pub fn open(
        path: &Path,
        valid_bytes: Option<u64>,
        durability: Durability,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<JournalWriter> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if let Some(valid) = valid_bytes {
            file.set_len(valid)?;
        }
        if file.metadata()?.len() == 0 {
            file.write_all(&super::encode_header())?;
            file.sync_all()?;
        }
        let (tx, rx) = mpsc::channel::<Append>();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                write_loop(file, rx, durability, &name);
            })?;
        Ok(JournalWriter {
            tx,
            path: path.to_owned(),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Completes once every record queued before it is written (or the
    /// writer is gone).
    pub async fn barrier(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.append(
            Vec::new(),
            Box::new(move |_| {
                let _ = done.send(());
            }),
        );
        let _ = wait.await;
    }

    /// Queues one framed record; `then` runs once it is written (with
    /// `false` if the write or sync failed, or the writer is gone).
    pub fn append(&self, bytes: Vec<u8>, then: AfterWrite) {
        if let Err(mpsc::SendError(append)) = self.tx.send(Append { bytes, then }) {
            (append.then)(false);
        }
    }
}

fn write_loop(mut file: File, rx: mpsc::Receiver<Append>, durability: Durability, name: &str) {
    let mut buffer = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        buffer.clear();
        for append in &batch {
            buffer.extend_from_slice(&append.bytes);
        }
        let started = std::time::Instant::now();
        let written = file.write_all(&buffer).and_then(|()| match durability {
            Durability::Fsync => file.sync_data(),
            Durability::Flush => Ok(()),
        });
        let ok = match written {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(journal = name, error = %e, records = batch.len(), "journal write failed");
                false
            }
        };
        tracing::trace!(
            records = batch.len(),
            size_bytes = buffer.len(),
            sync_ms = started.elapsed().as_millis() as u64,
            "journal batch"
        );
        for append in batch {
            (append.then)(ok);
        }
    }
}
