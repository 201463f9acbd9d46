//! The journal side of recording: each taken event becomes a record handed
//! to the writer under the table lock (so records keep the order events
//! were applied in), and its work runs once the record is written.
//! Compaction replaces the segments with a snapshot of the attempts kept.

use batch_worker_model::WireState;
use tokio::sync::oneshot;

use super::table::Table;
use super::tasks::Work;
use super::{now_ms, Worker};
use crate::journal::{encode_record, JournalRecord};

impl Worker {
    /// Gives `record` (the event just applied) to the journal. The work runs
    /// on the writer's side once the record is written, and never if it is
    /// not: the writer retries a failed write until it succeeds, so the
    /// work only waits (the writer is gone only when the worker exits).
    /// The receiver says whether the record is durable.
    pub(super) fn commit(
        &self,
        table: &mut Table,
        record: JournalRecord,
        work: Vec<Work>,
    ) -> oneshot::Receiver<bool> {
        let (done, durable) = oneshot::channel();
        let mut bytes = Vec::new();
        if let Err(e) = encode_record(&record, &mut bytes) {
            // Cannot happen: free texts are bounded far below the record
            // limit (MAX_EVENT_TEXT_BYTES).
            tracing::error!(key = %record.key, error = %e, "event not journaled; its effects are not performed");
            let _ = done.send(false);
            return durable;
        }
        table.journal_bytes += bytes.len() as u64;
        // Weak: a record waiting behind a failing write must not keep the
        // worker alive (the writer is the worker's; a strong handle here
        // would be a cycle that outlives a crashed incarnation).
        let worker = std::sync::Arc::downgrade(&self.inner);
        self.inner.journal.append(
            bytes,
            Box::new(move |ok| {
                if let (true, Some(inner)) = (ok, worker.upgrade()) {
                    Worker { inner }.perform(work);
                }
                let _ = done.send(ok);
            }),
        );
        if table.journal_bytes >= self.inner.settings.journal_segment_bytes {
            self.compact(table);
        }
        durable
    }

    /// Compaction, under the table lock: forgets attempts finished,
    /// reported and older than the retention window, and hands the journal
    /// a snapshot of every attempt still kept (their whole histories, with
    /// their sequence numbers), which replaces the segments before it.
    fn compact(&self, table: &mut Table) {
        let now = now_ms();
        let retention_ms = self.inner.settings.retention.as_millis() as i64;
        let reports = self.inner.ports.driver.is_some();
        let before = table.entries.len();
        table.entries.retain(|_, entry| {
            let view = &entry.view;
            let state = view.state();
            let reported =
                !reports || state.wire_state() == WireState::Cancelled || view.complete_delivered();
            let expired = view.ended_at_ms().is_some_and(|t| t <= now - retention_ms);
            !(state.is_terminal() && reported && expired)
        });
        let mut records: Vec<JournalRecord> = Vec::new();
        for entry in table.entries.values() {
            for step in entry.view.history() {
                records.push(JournalRecord::new(
                    step.seq,
                    step.time_ms,
                    entry.view.key().clone(),
                    step.event.clone(),
                ));
            }
        }
        records.sort_by_key(|r| r.seq);
        // Tried again only after another segment's worth of records, not
        // on every commit, if it fails.
        table.journal_bytes = 0;
        let mut bytes = Vec::new();
        for record in &records {
            if let Err(e) = encode_record(record, &mut bytes) {
                tracing::error!(error = %e, "journal compaction skipped");
                return;
            }
        }
        let (kept, forgotten, size_bytes) = (
            table.entries.len(),
            before - table.entries.len(),
            bytes.len(),
        );
        self.inner.journal.snapshot(
            bytes,
            Box::new(move |ok| {
                if ok {
                    tracing::info!(kept, forgotten, size_bytes, "journal compacted");
                }
            }),
        );
    }
}
