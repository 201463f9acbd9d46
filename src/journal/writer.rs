//! The journal writer: one thread takes framed records from every job, in
//! the order they were handed over, writes them in batches and makes each
//! batch durable once (group commit). What must follow a record — an
//! event's effects, a create's answer — runs after its batch is written.
//!
//! The journal is a directory of segments `000001.jnl`, `000002.jnl`, ...
//! Compaction writes a snapshot segment (the whole history of every
//! attempt still kept), makes it durable, and only then deletes the
//! segments before it; a snapshot supersedes everything before it, so a
//! crash in between loses nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

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

/// Told how long each batch written took (its write and, with
/// [`Durability::Fsync`], its `fdatasync`); set with
/// [`JournalWriter::observe_batches`] (the worker's metrics).
#[derive(Clone, Default)]
struct BatchObserver(Arc<OnceLock<ObserveBatch>>);

/// The function a [`BatchObserver`] holds.
type ObserveBatch = Box<dyn Fn(Duration) + Send + Sync>;

impl std::fmt::Debug for BatchObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "BatchObserver(set)"
        } else {
            "BatchObserver(none)"
        })
    }
}

enum Message {
    Append { bytes: Vec<u8>, then: AfterWrite },
    Snapshot { bytes: Vec<u8>, then: AfterWrite },
}

/// How records reach the file.
#[derive(Debug, Clone)]
pub enum WriterMode {
    /// A writer thread batches records (group commit); callbacks run on
    /// it, inside this runtime (so they may spawn tasks). The worker's mode.
    Thread(tokio::runtime::Handle),
    /// Each record is written on the caller's thread at once, and its
    /// callback is spawned as a task on the current tokio runtime. For
    /// deterministic simulation (one thread, a paused clock): the same
    /// files and format, and no thread whose timing tokio cannot see.
    Inline,
}

impl From<tokio::runtime::Handle> for WriterMode {
    fn from(runtime: tokio::runtime::Handle) -> WriterMode {
        WriterMode::Thread(runtime)
    }
}

#[derive(Debug, Clone)]
enum Sink {
    Thread(mpsc::Sender<Message>),
    Inline(Arc<Mutex<Segments>>),
}

/// Hands records to the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JournalWriter {
    sink: Sink,
    dir: PathBuf,
    observer: BatchObserver,
}

/// The segment file number `n` of `dir`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.jnl"))
}

/// The segments of `dir`, in order, with their numbers.
///
/// # Errors
/// The directory cannot be read.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

impl JournalWriter {
    /// Starts the writer on segment `segment` of `dir` (created, with its
    /// header, if absent; cut to `valid_bytes` when given, dropping a torn
    /// tail). Where callbacks run depends on `mode` (a runtime handle
    /// means [`WriterMode::Thread`]).
    ///
    /// # Errors
    /// The file cannot be opened, cut, or written.
    pub fn open(
        dir: &Path,
        segment: u64,
        valid_bytes: Option<u64>,
        durability: Durability,
        mode: impl Into<WriterMode>,
    ) -> std::io::Result<JournalWriter> {
        let path = segment_path(dir, segment);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        if let Some(valid) = valid_bytes {
            file.set_len(valid)?;
        }
        if file.metadata()?.len() == 0 {
            file.write_all(&super::encode_header())?;
            file.sync_all()?;
            sync_dir(dir)?;
        }
        let observer = BatchObserver::default();
        let mut state = Segments {
            dir: dir.to_owned(),
            number: segment,
            file,
            durability,
            observer: observer.clone(),
        };
        let sink = match mode.into() {
            WriterMode::Inline => Sink::Inline(Arc::new(Mutex::new(state))),
            WriterMode::Thread(runtime) => {
                let (tx, rx) = mpsc::channel::<Message>();
                std::thread::Builder::new()
                    .name("journal".into())
                    .spawn(move || {
                        let _runtime = runtime.enter();
                        state.run(rx);
                    })?;
                Sink::Thread(tx)
            }
        };
        Ok(JournalWriter {
            sink,
            dir: dir.to_owned(),
            observer,
        })
    }

    /// Has `observe` told how long each batch written from now on took
    /// (write and sync; failed writes are not observed). The first call
    /// wins; later ones are ignored.
    pub fn observe_batches(&self, observe: impl Fn(Duration) + Send + Sync + 'static) {
        let _ = self.observer.0.set(Box::new(observe));
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        self.send(Message::Append { bytes, then });
    }

    /// Queues a compaction: `bytes` (framed records) become a new snapshot
    /// segment that replaces every segment before it. Records queued
    /// before this call are covered by the snapshot; later ones follow it.
    pub fn snapshot(&self, bytes: Vec<u8>, then: AfterWrite) {
        self.send(Message::Snapshot { bytes, then });
    }

    fn send(&self, message: Message) {
        match &self.sink {
            Sink::Thread(tx) => {
                if let Err(mpsc::SendError(message)) = tx.send(message) {
                    match message {
                        Message::Append { then, .. } | Message::Snapshot { then, .. } => {
                            then(false)
                        }
                    }
                }
            }
            Sink::Inline(segments) => {
                let mut segments = segments.lock().unwrap_or_else(|p| p.into_inner());
                let (ok, then) = match message {
                    Message::Append { bytes, then } => (segments.write_batch(&bytes, 1), then),
                    Message::Snapshot { bytes, then } => (segments.snapshot(&bytes), then),
                };
                // The caller may hold locks its callback takes.
                tokio::spawn(async move { then(ok) });
            }
        }
    }
}

#[derive(Debug)]
struct Segments {
    dir: PathBuf,
    number: u64,
    file: File,
    durability: Durability,
    observer: BatchObserver,
}

impl Segments {
    fn run(&mut self, rx: mpsc::Receiver<Message>) {
        let mut buffer = Vec::new();
        let mut pending = None;
        loop {
            let first = match pending.take() {
                Some(message) => message,
                None => match rx.recv() {
                    Ok(message) => message,
                    Err(_) => return,
                },
            };
            let (bytes, then) = match first {
                Message::Snapshot { bytes, then } => {
                    then(self.snapshot(&bytes));
                    continue;
                }
                Message::Append { bytes, then } => (bytes, then),
            };
            buffer.clear();
            buffer.extend_from_slice(&bytes);
            let mut batch = vec![then];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Message::Append { bytes, then }) => {
                        buffer.extend_from_slice(&bytes);
                        batch.push(then);
                    }
                    Ok(snapshot) => {
                        pending = Some(snapshot);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let ok = self.write_batch(&buffer, batch.len());
            for then in batch {
                then(ok);
            }
        }
    }

    /// Appends `records` framed records in `buffer`, durably per the
    /// durability mode; false (and logged) if that failed.
    fn write_batch(&mut self, buffer: &[u8], records: usize) -> bool {
        let started = std::time::Instant::now();
        let written = self
            .file
            .write_all(buffer)
            .and_then(|()| match self.durability {
                Durability::Fsync => self.file.sync_data(),
                Durability::Flush => Ok(()),
            });
        tracing::trace!(
            records,
            size_bytes = buffer.len(),
            sync_ms = started.elapsed().as_millis() as u64,
            "journal batch"
        );
        match written {
            Ok(()) => {
                if let Some(observe) = self.observer.0.get() {
                    observe(started.elapsed());
                }
                true
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, records, "journal write failed");
                false
            }
        }
    }

    /// [`Segments::write_snapshot`], false (and logged) if it failed.
    fn snapshot(&mut self, bytes: &[u8]) -> bool {
        self.write_snapshot(bytes)
            .map_err(|e| {
                tracing::error!(dir = %self.dir.display(), error = %e, "journal compaction failed");
            })
            .is_ok()
    }

    /// Writes the snapshot as the next segment, durably, then deletes every
    /// earlier segment and appends to the new one from now on.
    fn write_snapshot(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let next = self.number + 1;
        let path = write_snapshot_segment(&self.dir, next, bytes)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.number = next;
        Ok(())
    }
}

/// Writes `bytes` (framed records) as snapshot segment `next` of `dir`,
/// durably (a partial file, then one rename), then deletes every earlier
/// segment. Returns the segment's path.
pub(super) fn write_snapshot_segment(
    dir: &Path,
    next: u64,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    let path = segment_path(dir, next);
    let partial = path.with_extension("jnl.partial");
    {
        let mut file = File::create(&partial)?;
        file.write_all(&super::encode_snapshot_header())?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&partial, &path)?;
    sync_dir(dir)?;
    for (number, old) in segments(dir)? {
        if number < next {
            std::fs::remove_file(old)?;
        }
    }
    sync_dir(dir)?;
    Ok(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
