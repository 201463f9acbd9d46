//! The journal writer: one thread takes framed records from every job, in
//! the order they were handed over, writes them in batches and makes each
//! batch durable once (group commit). What must follow a record — an
//! event's effects, a create's answer — runs after its batch is written.
//!
//! The journal is a directory of segments `000001.jnl`, `000002.jnl`, ...
//! Compaction writes a snapshot segment (the whole history of every
//! attempt still kept), makes it durable, starts a fresh segment after it
//! for the appends that follow, and only then deletes the segments before
//! it; a snapshot supersedes everything before it, so a crash in between
//! loses nothing.
//!
//! This file is long (about 640 lines) because the thread writer and the
//! inline writer (the simulation's) share one `Segments` and one failure
//! rule (cut back, retry), which must stay the same for both.
//!
//! # A write that fails
//!
//! A failed or short append (a full disk, an IO error) is cut back to the
//! end of the last whole record before anything else is written, and the
//! same batch is tried again, with backoff ([`RETRY_FIRST`] doubling to
//! [`RETRY_MOST`]), until it is written. Records are never dropped or
//! reordered, and what follows a record (its callback) waits until it is
//! written: an event that is not journaled has no effects.
//! [`JournalWriter::is_failing`] says so meanwhile (creates are refused).
//!
//! # The reserve and the checkpoint
//!
//! Each segment is preallocated ([`SegmentOptions::preallocate_bytes`],
//! `fallocate` keeping the file's size), so records that end and report
//! jobs still find room on a disk that others filled. After every batch
//! the writer overwrites `checkpoint` (see [`super::checkpoint`]) with the
//! segment and byte offset now written; opening the journal refuses a
//! journal that ends before it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use super::checkpoint::{Checkpoint, CheckpointFile};

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

/// First wait before a failed batch is tried again.
pub const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a failed batch.
pub const RETRY_MOST: Duration = Duration::from_secs(2);

/// Default bytes preallocated for each segment (8 MiB): about 25,000
/// records, the end and report of thousands of jobs on a full disk.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 8 * 1024 * 1024;

/// What runs after a record's batch is written; `true` when it is durable,
/// `false` only when the writer is gone (the worker is exiting).
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

/// A fault a [`WriteFaults`] injects into one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// Nothing is written; the append fails with `ENOSPC`.
    Full,
    /// The first `n` bytes are written (a torn record), then the append
    /// fails with `ENOSPC`.
    Torn(usize),
}

/// Injected write faults, for the simulation: asked before every append
/// with the batch's size in bytes; `Some` makes that append fail.
#[derive(Clone)]
pub struct WriteFaults(pub Arc<dyn Fn(usize) -> Option<WriteFault> + Send + Sync>);

impl std::fmt::Debug for WriteFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteFaults")
    }
}

/// How segments are written.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// When a record counts as written.
    pub durability: Durability,
    /// Bytes reserved for each segment when it is started (`fallocate`,
    /// keeping the file's size); 0 for none. Where the file system cannot
    /// preallocate, segments grow as they are written.
    pub preallocate_bytes: u64,
    /// Injected faults (simulation only).
    pub faults: Option<WriteFaults>,
}

impl Default for SegmentOptions {
    fn default() -> SegmentOptions {
        SegmentOptions {
            durability: Durability::Fsync,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            faults: None,
        }
    }
}

impl From<Durability> for SegmentOptions {
    fn from(durability: Durability) -> SegmentOptions {
        SegmentOptions {
            durability,
            ..SegmentOptions::default()
        }
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
    /// callback is spawned as a task on the current tokio runtime; a failed
    /// write is queued with later ones and tried again by a task (tokio's
    /// clock). For deterministic simulation (one thread, a paused clock):
    /// the same files and format, and no thread whose timing tokio cannot
    /// see.
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
    Inline(Arc<Mutex<InlineWriter>>),
}

/// Hands records to the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JournalWriter {
    sink: Sink,
    dir: PathBuf,
    observer: BatchObserver,
    failing: Arc<AtomicBool>,
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
        options: impl Into<SegmentOptions>,
        mode: impl Into<WriterMode>,
    ) -> std::io::Result<JournalWriter> {
        let options = options.into();
        let path = segment_path(dir, segment);
        let existed = path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        if let Some(valid) = valid_bytes {
            file.set_len(valid)?;
        }
        if file.metadata()?.len() == 0 {
            file.write_all(&super::encode_header())?;
            file.sync_all()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        preallocate(&file, options.preallocate_bytes);
        let len = file.metadata()?.len();
        let observer = BatchObserver::default();
        let failing = Arc::new(AtomicBool::new(false));
        let mut segments = Segments {
            dir: dir.to_owned(),
            number: segment,
            file,
            len,
            cut_pending: false,
            checkpoint: CheckpointFile::open(dir)?,
            options,
            observer: observer.clone(),
        };
        segments.mark();
        let sink = match mode.into() {
            WriterMode::Inline => Sink::Inline(Arc::new(Mutex::new(InlineWriter {
                segments,
                queued: std::collections::VecDeque::new(),
                retry: RETRY_FIRST,
                retrying: false,
                failing: failing.clone(),
            }))),
            WriterMode::Thread(runtime) => {
                let (tx, rx) = mpsc::channel::<Message>();
                let failing = failing.clone();
                std::thread::Builder::new()
                    .name("journal".into())
                    .spawn(move || {
                        let _runtime = runtime.enter();
                        segments.run(rx, &failing);
                    })?;
                Sink::Thread(tx)
            }
        };
        Ok(JournalWriter {
            sink,
            dir: dir.to_owned(),
            observer,
            failing,
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

    /// Whether the last write failed and records are waiting for it to be
    /// tried again (a full disk): nothing queued now is written until it is.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
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
    /// `false` only if the writer is gone).
    pub fn append(&self, bytes: Vec<u8>, then: AfterWrite) {
        self.send(Message::Append { bytes, then });
    }

    /// Queues a compaction: `bytes` (framed records) become a new snapshot
    /// segment that replaces every segment before it. Records queued
    /// before this call are covered by the snapshot; later ones follow it.
    /// `then` gets `false` if the compaction failed (the journal goes on
    /// in the segments it had).
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
            Sink::Inline(inline) => InlineWriter::send(inline, message),
        }
    }
}

/// The writer of [`WriterMode::Inline`]: messages wait in `queued` while a
/// failed write is being retried.
#[derive(Debug)]
struct InlineWriter {
    segments: Segments,
    queued: std::collections::VecDeque<QueuedMessage>,
    retry: Duration,
    retrying: bool,
    failing: Arc<AtomicBool>,
}

/// A message queued behind a failed write.
struct QueuedMessage(Message);

impl std::fmt::Debug for QueuedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueuedMessage")
    }
}

impl InlineWriter {
    fn send(inline: &Arc<Mutex<InlineWriter>>, message: Message) {
        let mut writer = inline.lock().unwrap_or_else(|p| p.into_inner());
        writer.queued.push_back(QueuedMessage(message));
        if !writer.retrying {
            writer.flush(inline);
        }
    }

    /// Writes the queued messages in order; on a failed append, stops and
    /// schedules a retry.
    fn flush(&mut self, inline: &Arc<Mutex<InlineWriter>>) {
        while let Some(QueuedMessage(message)) = self.queued.pop_front() {
            match message {
                Message::Snapshot { bytes, then } => {
                    let ok = self.segments.snapshot(&bytes);
                    tokio::spawn(async move { then(ok) });
                }
                Message::Append { bytes, then } => {
                    if let Err(e) = self.segments.write_batch(&bytes, 1) {
                        self.segments.log_failure(&e, 1, self.retry);
                        self.queued
                            .push_front(QueuedMessage(Message::Append { bytes, then }));
                        self.failing.store(true, Ordering::Relaxed);
                        self.retrying = true;
                        let wait = self.retry;
                        self.retry = (self.retry * 2).min(RETRY_MOST);
                        let inline = inline.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let mut writer = inline.lock().unwrap_or_else(|p| p.into_inner());
                            writer.retrying = false;
                            writer.flush(&inline);
                        });
                        return;
                    }
                    // The caller may hold locks its callback takes.
                    tokio::spawn(async move { then(true) });
                }
            }
        }
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(dir = %self.segments.dir.display(), "journal writes again");
        }
        self.retry = RETRY_FIRST;
    }
}

#[derive(Debug)]
struct Segments {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Bytes of the segment that hold its header and whole records: where
    /// the next append starts, and what a failed one is cut back to.
    len: u64,
    /// A failed append could not be cut back yet: cut before writing.
    cut_pending: bool,
    checkpoint: CheckpointFile,
    options: SegmentOptions,
    observer: BatchObserver,
}

impl Segments {
    fn run(&mut self, rx: mpsc::Receiver<Message>, failing: &AtomicBool) {
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
            // The same batch until it is written: nothing after it may be
            // written first, and nothing in it is dropped.
            let mut retry = RETRY_FIRST;
            while let Err(e) = self.write_batch(&buffer, batch.len()) {
                self.log_failure(&e, batch.len(), retry);
                failing.store(true, Ordering::Relaxed);
                std::thread::sleep(retry);
                retry = (retry * 2).min(RETRY_MOST);
            }
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!(dir = %self.dir.display(), "journal writes again");
            }
            for then in batch {
                then(true);
            }
        }
    }

    fn log_failure(&self, e: &std::io::Error, records: usize, retry: Duration) {
        tracing::error!(
            dir = %self.dir.display(),
            error = %e,
            records,
            retry_ms = retry.as_millis() as u64,
            "journal write failed; cut back to the last whole record, trying again"
        );
    }

    /// Appends `records` framed records in `buffer`, durably per the
    /// durability mode. On failure the segment is cut back to its last
    /// whole record (now, or before the next try if that fails too).
    fn write_batch(&mut self, buffer: &[u8], records: usize) -> std::io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if self.cut_pending {
            self.file.set_len(self.len)?;
            self.cut_pending = false;
        }
        let fault = self
            .options
            .faults
            .as_ref()
            .and_then(|f| (f.0)(buffer.len()));
        let written = match fault {
            Some(WriteFault::Full) => Err(no_space()),
            Some(WriteFault::Torn(n)) => self
                .file
                .write_all(&buffer[..n.min(buffer.len())])
                .and(Err(no_space())),
            None => self.file.write_all(buffer),
        }
        .and_then(|()| match self.options.durability {
            Durability::Fsync => self.file.sync_data(),
            Durability::Flush => Ok(()),
        });
        if let Err(e) = written {
            // A partly written record must not stay: later appends would
            // land after it and leave a corrupt middle.
            self.cut_pending = self.file.set_len(self.len).is_err();
            return Err(e);
        }
        self.len += buffer.len() as u64;
        self.mark();
        tracing::trace!(
            records,
            size_bytes = buffer.len(),
            sync_ms = started.elapsed().as_millis() as u64,
            "journal batch"
        );
        if let Some(observe) = self.observer.0.get() {
            observe(started.elapsed());
        }
        Ok(())
    }

    /// Writes the checkpoint: this segment, written through `len`.
    fn mark(&mut self) {
        let now = Checkpoint {
            segment: self.number,
            offset: self.len,
        };
        if let Err(e) = self.checkpoint.write(now) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "journal checkpoint not written");
        }
    }

    /// [`Segments::write_snapshot`], false (and logged) if it failed.
    fn snapshot(&mut self, bytes: &[u8]) -> bool {
        self.write_snapshot(bytes)
            .map_err(|e| {
                tracing::error!(dir = %self.dir.display(), error = %e, "journal compaction failed; the journal goes on in its segments");
            })
            .is_ok()
    }

    /// Writes the snapshot as the next segment and a fresh segment after
    /// it, durably, then deletes every earlier segment and appends to the
    /// fresh one from now on. On failure nothing changes.
    fn write_snapshot(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let snapshot = self.number + 1;
        let (path, file) =
            write_snapshot_segment(&self.dir, snapshot, bytes, self.options.preallocate_bytes)?;
        self.file = file;
        self.number = snapshot + 1;
        self.len = super::HEADER_BYTES as u64;
        self.cut_pending = false;
        self.mark();
        tracing::debug!(snapshot = %path.display(), "journal snapshot written");
        Ok(())
    }
}

/// Writes `bytes` (framed records) as snapshot segment `snapshot` of
/// `dir`, and an empty segment `snapshot + 1` after it (preallocated with
/// `preallocate_bytes`), durably; then deletes every segment before the
/// snapshot. Returns the snapshot's path and the empty segment, open for
/// appending. On failure, what it wrote is removed and nothing changes.
pub(super) fn write_snapshot_segment(
    dir: &Path,
    snapshot: u64,
    bytes: &[u8],
    preallocate_bytes: u64,
) -> std::io::Result<(PathBuf, File)> {
    let path = segment_path(dir, snapshot);
    let partial = path.with_extension("jnl.partial");
    let next = segment_path(dir, snapshot + 1);
    let written = (|| {
        {
            let mut file = File::create(&partial)?;
            file.write_all(&super::encode_snapshot_header())?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&next)?;
        file.write_all(&super::encode_header())?;
        file.sync_all()?;
        preallocate(&file, preallocate_bytes);
        Ok(file)
    })();
    let file = match written {
        Ok(file) => file,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&next);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &path)?;
    sync_dir(dir)?;
    for (number, old) in segments(dir)? {
        if number < snapshot {
            std::fs::remove_file(old)?;
        }
    }
    sync_dir(dir)?;
    drop(file);
    let file = OpenOptions::new().append(true).open(&next)?;
    Ok((path, file))
}

/// Reserves `bytes` for `file` without changing its size (best effort: a
/// file system that cannot, or a disk already full, leaves it growing as
/// it is written).
fn preallocate(file: &File, bytes: u64) {
    use nix::fcntl::{fallocate, FallocateFlags};
    if bytes == 0 {
        return;
    }
    if let Err(e) = fallocate(file, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, bytes as i64) {
        tracing::debug!(error = %e, size_bytes = bytes, "journal segment not preallocated");
    }
}

fn no_space() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ENOSPC)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
