//! The demo's outcome table: for each final state, the jobs planned to end
//! in it and the jobs that did, side by side, and how many of the planned
//! ones ended as planned; a row where these differ is marked [`MARK`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::plan::Expected;
use super::JobResult;

/// The mark of a row where planned and actual differ.
pub const MARK: char = '!';

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRow {
    /// The final state; `None`: jobs not final at the end of the run.
    pub state: Option<Expected>,
    /// Jobs planned to end in this state.
    pub planned: usize,
    /// Jobs that ended in it (by the worker's status).
    pub actual: usize,
    /// Jobs planned for it that ended in it, with the driver told the same.
    pub as_planned: usize,
}

impl OutcomeRow {
    /// Whether the row is marked: the actual count is not the planned
    /// one, or not every job planned for the state ended as planned.
    pub fn differs(&self) -> bool {
        self.planned != self.actual || self.as_planned != self.planned
    }
}

/// The rows for `jobs`: final states in their order, "not final" last.
pub fn outcome_rows(jobs: &[JobResult]) -> Vec<OutcomeRow> {
    // Keyed by (not final, state), so that "not final" sorts last.
    let mut rows: BTreeMap<(bool, Option<Expected>), OutcomeRow> = BTreeMap::new();
    for job in jobs {
        for (state, planned, actual) in [(Some(job.expected), 1, 0), (job.actual, 0, 1)] {
            let row = rows.entry((state.is_none(), state)).or_insert(OutcomeRow {
                state,
                planned: 0,
                actual: 0,
                as_planned: 0,
            });
            row.planned += planned;
            row.actual += actual;
            row.as_planned += planned * usize::from(job.as_planned());
        }
    }
    rows.into_values().collect()
}

/// The table for `jobs`, a header first and, when a row is marked, a line
/// under it explaining the mark.
pub fn render_outcomes(jobs: &[JobResult]) -> String {
    let rows = outcome_rows(jobs);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<28} {:>7} {:>7} {:>11}",
        "final state", "planned", "actual", "as planned"
    );
    for row in &rows {
        let state = row
            .state
            .map_or_else(|| "not final".to_owned(), |s| s.to_string());
        let as_planned = if row.state.is_some() {
            row.as_planned.to_string()
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "{} {:<28} {:>7} {:>7} {:>11}",
            if row.differs() { MARK } else { ' ' },
            state,
            row.planned,
            row.actual,
            as_planned
        );
    }
    if rows.iter().any(OutcomeRow::differs) {
        let _ = writeln!(
            out,
            "{MARK} planned and actual differ: jobs planned for the state ended otherwise, or the \
             driver was told otherwise (each is listed below)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::plan::Kind;
    use batch_worker_model::ErrorKind;

    fn job(job_id: i64, kind: Kind, actual: Option<Expected>, reported: Option<&str>) -> JobResult {
        JobResult {
            job_id,
            kind,
            expected: kind.expected(),
            actual,
            error: None,
            reported_state: reported.map(str::to_owned),
            faulted: false,
        }
    }

    #[test]
    fn rows_where_planned_and_actual_differ_are_marked() {
        let missing = Expected::Error(ErrorKind::SpecMissing);
        let jobs = [
            job(
                1,
                Kind::Succeeds,
                Some(Expected::Succeeded),
                Some("succeeded"),
            ),
            // Planned to succeed, ended spec_missing.
            job(2, Kind::Succeeds, Some(missing), Some("error")),
            job(3, Kind::SpecsDeleted, Some(missing), Some("error")),
            job(
                4,
                Kind::ExitsNonZero,
                Some(Expected::Failed(Some(3))),
                Some("failed"),
            ),
            // Never final.
            job(5, Kind::Succeeds, None, None),
        ];
        let rows = outcome_rows(&jobs);
        let row = |state: Option<Expected>| rows.iter().find(|r| r.state == state).unwrap();
        assert_eq!(
            (
                row(Some(Expected::Succeeded)).planned,
                row(Some(Expected::Succeeded)).actual
            ),
            (3, 1)
        );
        assert_eq!(
            (row(Some(missing)).planned, row(Some(missing)).actual),
            (1, 2)
        );
        assert_eq!(rows.last().unwrap().state, None, "not final comes last");

        let table = render_outcomes(&jobs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["final", "state", "planned", "actual", "as", "planned"]
        );
        let line = |name: &str| {
            *lines
                .iter()
                .find(|l| l[2..].starts_with(name))
                .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
        };
        fn fields(l: &str) -> Vec<&str> {
            l.split_whitespace().collect()
        }
        assert_eq!(fields(line("succeeded")), ["!", "succeeded", "3", "1", "1"]);
        assert_eq!(
            fields(line("error: spec_missing")),
            ["!", "error:", "spec_missing", "1", "2", "1"]
        );
        assert_eq!(
            fields(line("not final")),
            ["!", "not", "final", "0", "1", "-"]
        );
        // A row where all agree is not marked.
        assert!(line("failed (exit 3)").starts_with("  failed"), "{table}");
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("! planned and actual differ"),
            "{table}"
        );

        // All as planned: nothing marked, no explanation.
        let table = render_outcomes(&jobs[..1]);
        assert!(!table.contains('!'), "{table}");
    }
}
