//! The replay as an SVG picture a browser shows: one row per attempt
//! (`batch:job` and the attempt), a bar per phase coloured by phase (with a
//! legend), a mark at the end coloured by the final state, a time axis in
//! seconds from the journal's first record, and beneath, a step chart of
//! the cores in use with its peak marked.
//!
//! Each row is `<g class="attempt" data-job="B:J" data-attempt="A">` with
//! a `<title>` (the hover text: the attempt, its final state, its
//! phases). Rows shrink to fit about 1,200 px (1 px at the least); below
//! 9 px only every few rows is labelled.

use std::fmt::Write as _;

use super::phases::Phase;
use super::text::{cores, duration, final_words, iso, outcome, relative};
use super::Report;

/// Picture width, px.
const WIDTH: f64 = 1200.0;
/// Where the plot begins (the labels are left of it), px.
const PLOT_X: f64 = 170.0;
/// Plot width, px.
const PLOT_W: f64 = WIDTH - PLOT_X - 30.0;
/// Where the rows begin, px.
const ROWS_Y: f64 = 86.0;
/// The height the rows share, px.
const ROWS_H: f64 = 1200.0;
/// Height of the cores chart, px.
const CORES_H: f64 = 140.0;

/// Fill of each phase, by [`Phase::index`].
const PHASE_COLOURS: [&str; 10] = [
    "#9ecae1", // waiting for spec
    "#fd8d3c", // waiting for resources
    "#bcbddc", // pulling image
    "#a1d99b", // staging inputs
    "#bdbdbd", // starting process
    "#31a354", // running
    "#de2d26", // cancelling
    "#3182bd", // uploading outputs
    "#fdd0a2", // uploading logs
    "#969696", // reporting to driver
];

/// The final states' marks: class suffix, fill, legend text.
const OUTCOME_MARKS: [(&str, &str, &str); 5] = [
    ("ok", "#006d2c", "succeeded"),
    ("failed", "#a50f15", "failed / timed out"),
    ("errored", "#54278f", "errored"),
    ("cancelled", "#252525", "cancelled"),
    ("live", "#ffffff", "still live"),
];

/// `text` with `& < > " '` escaped, for XML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A tick step in ms giving about `ticks` ticks over `span_ms`: 1, 2 or 5
/// times a power of ten, at least 1 ms.
fn tick_step(span_ms: i64, ticks: i64) -> i64 {
    let raw = (span_ms / ticks.max(1)).max(1);
    let mut magnitude = 1;
    while magnitude * 10 <= raw {
        magnitude *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10 * magnitude)
}

/// Seconds for a tick label: `12 s`, `0.25 s`.
fn seconds(ms: i64) -> String {
    let text = format!("{}.{:03}", ms / 1000, ms % 1000);
    format!("{} s", text.trim_end_matches('0').trim_end_matches('.'))
}

impl Report {
    /// The report's timelines and the cores in use as an SVG document (see
    /// the module's doc).
    pub fn timeline_svg(&self) -> String {
        let origin = self.summary.first_ms.unwrap_or_default();
        let end = self.summary.last_ms.unwrap_or(origin);
        let span_ms = (end - origin).max(1);
        let x = |ms: i64| PLOT_X + (ms - origin) as f64 / span_ms as f64 * PLOT_W;
        let rows = self.timelines.len();
        let row_h = (ROWS_H / rows.max(1) as f64).clamp(1.0, 16.0);
        let bar_h = if row_h >= 4.0 { row_h * 0.8 } else { row_h };
        // Label every row when there is room, else every `label_every`th.
        let label_every = (9.0 / row_h).ceil().max(1.0) as usize;
        let font = row_h.clamp(7.0, 11.0);
        let rows_end = ROWS_Y + rows as f64 * row_h;
        let cores_y = rows_end + 44.0;
        let height = cores_y + CORES_H + 40.0;

        let mut out = String::with_capacity(1024 + rows * 400);
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="11">"#
        );
        out.push_str("<style>rect.open{fill-opacity:.45}text.l{text-anchor:end}.axis{stroke:#888;stroke-width:.5}.grid{stroke:#ddd;stroke-width:.5}");
        for (i, colour) in PHASE_COLOURS.iter().enumerate() {
            let _ = write!(out, ".p{i}{{fill:{colour}}}");
        }
        for (name, colour, _) in OUTCOME_MARKS {
            let _ = write!(
                out,
                ".o-{name}{{fill:{colour};stroke:#000;stroke-width:.3}}"
            );
        }
        out.push_str("</style>\n");
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="10" y="18" font-size="13" font-weight="bold">batch-worker replay: {} attempts over {}; 0 s on the axis is {}</text>"#,
            rows,
            escape(&duration(end - origin)),
            escape(&origin_text(self.summary.first_ms)),
        );
        // Legend: phases, then final states.
        let mut lx = 10.0;
        for phase in Phase::ALL {
            let _ = writeln!(
                out,
                r#"<rect class="p{}" x="{lx:.0}" y="30" width="10" height="10"/><text x="{:.0}" y="39">{}</text>"#,
                phase.index(),
                lx + 13.0,
                phase.label()
            );
            lx += 18.0 + phase.label().len() as f64 * 5.6;
        }
        let mut lx = 10.0;
        for (name, _, label) in OUTCOME_MARKS {
            let _ = writeln!(
                out,
                r#"<rect class="o-{name}" x="{lx:.0}" y="47" width="4" height="10"/><text x="{:.0}" y="56">{label}</text>"#,
                lx + 8.0,
            );
            lx += 20.0 + label.len() as f64 * 5.6;
        }
        // Time axis and grid.
        let step = tick_step(span_ms, 10);
        let mut tick = 0;
        while tick <= span_ms {
            let tx = x(origin + tick);
            let _ = writeln!(
                out,
                r#"<line class="grid" x1="{tx:.1}" y1="{:.0}" x2="{tx:.1}" y2="{rows_end:.1}"/><text x="{tx:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
                ROWS_Y - 6.0,
                ROWS_Y - 9.0,
                seconds(tick),
            );
            tick += step;
        }
        // Rows.
        for (i, timeline) in self.timelines.iter().enumerate() {
            let y = ROWS_Y + i as f64 * row_h;
            let key = &timeline.key;
            let final_words = final_words(&timeline.final_state);
            let mut title = format!("{key}: {final_words}");
            for span in &timeline.phases {
                let _ = write!(
                    title,
                    "\n{} {}: {}{}",
                    relative(span.start_ms - origin),
                    span.phase.label(),
                    duration(span.duration_ms()),
                    if span.open { " (journal ends)" } else { "" }
                );
            }
            let _ = write!(
                out,
                r#"<g class="attempt" data-job="{}:{}" data-attempt="{}"><title>{}</title>"#,
                key.batch_id,
                key.job_id,
                escape(&key.attempt_id),
                escape(&title)
            );
            if i % label_every == 0 {
                let _ = write!(
                    out,
                    r#"<text class="l" x="{:.0}" y="{:.1}" font-size="{font:.0}">{}:{} {}</text>"#,
                    PLOT_X - 6.0,
                    y + row_h / 2.0 + font / 2.8,
                    key.batch_id,
                    key.job_id,
                    escape(&key.attempt_id)
                );
            }
            for span in &timeline.phases {
                let (x0, x1) = (x(span.start_ms), x(span.end_ms));
                if span.duration_ms() == 0 {
                    continue;
                }
                let _ = write!(
                    out,
                    r#"<rect class="p{}{}" x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{bar_h:.1}"/>"#,
                    span.phase.index(),
                    if span.open { " open" } else { "" },
                    (x1 - x0).max(0.5),
                );
            }
            let mark = match outcome(&timeline.final_state) {
                "succeeded" => "ok",
                "errored" => "errored",
                "cancelled" => "cancelled",
                other if other.starts_with("still") => "live",
                _ => "failed",
            };
            let end_x = timeline
                .phases
                .iter()
                .map(|s| s.end_ms)
                .max()
                .map_or(PLOT_X, x);
            let _ = writeln!(
                out,
                r#"<rect class="o-{mark}" x="{:.1}" y="{y:.1}" width="2" height="{bar_h:.1}"/></g>"#,
                end_x.min(PLOT_X + PLOT_W)
            );
        }
        let _ = writeln!(
            out,
            r#"<line class="axis" x1="{PLOT_X}" y1="{rows_end:.1}" x2="{:.0}" y2="{rows_end:.1}"/>"#,
            PLOT_X + PLOT_W
        );
        self.cores_chart(&mut out, cores_y, &x, span_ms, origin);
        out.push_str("</svg>\n");
        out
    }

    /// The step chart of the cores in use, from `top` (px) down.
    fn cores_chart(
        &self,
        out: &mut String,
        top: f64,
        x: &dyn Fn(i64) -> f64,
        span_ms: i64,
        origin: i64,
    ) {
        let peak = super::phases::peak(&self.cores_in_use);
        let max = peak.map_or(0, |p| p.mcpu).max(1000);
        let bottom = top + CORES_H;
        let y = |mcpu: u64| bottom - mcpu as f64 / max as f64 * CORES_H;
        let _ = writeln!(
            out,
            r#"<text x="10" y="{:.0}" font-weight="bold">cores in use (granted until the process ends)</text>"#,
            top - 12.0
        );
        let _ = writeln!(
            out,
            r#"<line class="axis" x1="{PLOT_X}" y1="{bottom:.1}" x2="{:.0}" y2="{bottom:.1}"/><line class="axis" x1="{PLOT_X}" y1="{top:.1}" x2="{PLOT_X}" y2="{bottom:.1}"/>"#,
            PLOT_X + PLOT_W
        );
        for (value, label) in [(0, "0".to_owned()), (max, cores(max))] {
            let _ = writeln!(
                out,
                r#"<text class="l" x="{:.0}" y="{:.1}">{label} cores</text>"#,
                PLOT_X - 6.0,
                y(value) + 4.0
            );
        }
        let step = tick_step(span_ms, 10);
        let mut tick = 0;
        while tick <= span_ms {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
                x(origin + tick),
                bottom + 14.0,
                seconds(tick)
            );
            tick += step;
        }
        let mut path = format!("M{PLOT_X:.1},{bottom:.1}");
        let mut last = 0;
        for point in &self.cores_in_use {
            let px = x(point.time_ms);
            let _ = write!(path, " H{px:.1} V{:.1}", y(point.mcpu));
            last = point.mcpu;
        }
        let _ = write!(path, " H{:.1}", PLOT_X + PLOT_W);
        let _ = writeln!(
            out,
            r##"<path d="{path}" fill="none" stroke="#3182bd" stroke-width="1.2"><title>cores in use; last {} cores</title></path>"##,
            cores(last)
        );
        if let Some(peak) = peak.filter(|p| p.mcpu > 0) {
            let (px, py) = (x(peak.time_ms), y(peak.mcpu));
            // The label left of the mark when the mark is far right.
            let (label_x, anchor) = if px > PLOT_X + 0.7 * PLOT_W {
                (px - 6.0, "end")
            } else {
                (px + 6.0, "start")
            };
            let _ = writeln!(
                out,
                r##"<line x1="{PLOT_X}" y1="{py:.1}" x2="{:.0}" y2="{py:.1}" stroke="#de2d26" stroke-dasharray="4 3" stroke-width=".8"/><circle cx="{px:.1}" cy="{py:.1}" r="3" fill="#de2d26"/><text x="{label_x:.1}" y="{:.1}" text-anchor="{anchor}" fill="#de2d26">peak {} cores at {}</text>"##,
                PLOT_X + PLOT_W,
                py - 5.0,
                cores(peak.mcpu),
                escape(&relative(peak.time_ms - origin)),
            );
        }
    }
}

fn origin_text(first_ms: Option<i64>) -> String {
    first_ms.map_or_else(|| "no records".to_owned(), iso)
}
