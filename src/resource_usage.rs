//! Per-task resource usage in Hail Batch's `resource_usage` file format.
//!
//! Wire source: Hail's `batch/batch/resource_usage.py` `ResourceUsageMonitor`
//! (commit `fd91ae34`): `write_header`, `measure`, `percent_cpu_usage`,
//! `network_bandwidth`, `_decode_to_df`, `periodically_measure`. Layout (big
//! endian, no padding, no count): an 8-byte header, the format version as an
//! `i64`, then 56-byte [`Record`]s to the end; the header alone
//! ([`no_data`]) is an empty table. [`Sampler`] turns raw counters into
//! records with Hail's arithmetic; [`next_delay`] is Hail's schedule. Reading
//! cgroups, disks and counters is the caller's job.

use std::time::Duration;

use base64::Engine as _;

/// The format version this module writes (Hail's `ResourceUsageMonitor.VERSION`).
pub const FORMAT_VERSION: i64 = 2;
/// Size of the header: the format version, a big-endian `i64`.
pub const HEADER_BYTES: usize = 8;
/// Size of one version-2 record (Hail's `struct.pack('>2qd2q2d', ...)`).
pub const RECORD_BYTES: usize = 56;
/// Size of one version-1 record: time, memory and cpu only.
const RECORD_V1_BYTES: usize = 24;

/// The header: [`FORMAT_VERSION`] as a big-endian `i64` (Hail's `write_header`).
pub fn header() -> [u8; HEADER_BYTES] {
    FORMAT_VERSION.to_be_bytes()
}

/// The bytes of a task with no record: the header alone (Hail's
/// `ResourceUsageMonitor.no_data`, base64 `AAAAAAAAAAI=`).
pub fn no_data() -> Vec<u8> {
    header().to_vec()
}

/// Standard base64 with padding, as the worker's `resource_usage` endpoint
/// serves each task's bytes.
pub fn to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One sample, one record of the file (Hail's `measure`; Hail's column
/// names, from `_decode_to_df`, in parentheses).
///
/// Missing values: Hail never writes a record with a missing field;
/// `measure` returns without writing when memory, cpu or the network
/// counters cannot be read. This worker has no per-job network counters
/// yet, so it still writes records and stores the two network fields as
/// NaN (`f64::NAN`, bytes `7ff8000000000000`, numpy's `np.nan`). Read back
/// by Hail's `decode_to_df` they are `NaN` in a float64 column, which
/// pandas treats as missing: `Series.max()` skips it, the front end's plot
/// keeps its default axis range, and `orjson` serializes it as `null` in
/// the JSON API. The integer fields have no missing value (any integer is a
/// plausible reading), so a sample without memory is not recorded at all,
/// as in Hail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// Wall clock, ms since the Unix epoch, when the sample was taken (`time_msecs`).
    pub time_ms: i64,
    /// cgroup `memory.current`, bytes (`memory_in_bytes`).
    pub memory_bytes: i64,
    /// Cores in use since the previous sample, 1.0 = one full core (`cpu_usage`).
    pub cpu_usage: f64,
    /// Container overlay usage minus `/io` usage (the overlay alone when `/io`
    /// is an attached disk), bytes (`non_io_storage_in_bytes`).
    pub non_io_storage_bytes: i64,
    /// Used bytes of the `/io` mount, 0 without one (`io_storage_in_bytes`).
    pub io_storage_bytes: i64,
    /// Upload bandwidth in MiB/s (`bytes / ms / 1024 / 1024 * 1000`), despite
    /// Hail's column name (`network_bandwidth_upload_in_bytes_per_second`);
    /// NaN when not measured (see the type's docs).
    pub network_upload: f64,
    /// Download bandwidth in MiB/s, as `network_upload`
    /// (`network_bandwidth_download_in_bytes_per_second`); NaN when not measured.
    pub network_download: f64,
}

impl Record {
    /// The 56 record bytes: `>2qd2q2d` in field order.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        let fields: [[u8; 8]; 7] = [
            self.time_ms.to_be_bytes(),
            self.memory_bytes.to_be_bytes(),
            self.cpu_usage.to_be_bytes(),
            self.non_io_storage_bytes.to_be_bytes(),
            self.io_storage_bytes.to_be_bytes(),
            self.network_upload.to_be_bytes(),
            self.network_download.to_be_bytes(),
        ];
        for (chunk, field) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&field);
        }
        out
    }

    /// Decodes one record; `chunk` is 24 (version 1) or 56 bytes long.
    fn decode_chunk(chunk: &[u8]) -> Record {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&chunk[i * 8..i * 8 + 8]);
            w
        };
        let q = |i| i64::from_be_bytes(word(i));
        let f = |i| f64::from_be_bytes(word(i));
        let v2 = chunk.len() >= RECORD_BYTES;
        Record {
            time_ms: q(0),
            memory_bytes: q(1),
            cpu_usage: f(2),
            non_io_storage_bytes: if v2 { q(3) } else { 0 },
            io_storage_bytes: if v2 { q(4) } else { 0 },
            network_upload: if v2 { f(5) } else { f64::NAN },
            network_download: if v2 { f(6) } else { f64::NAN },
        }
    }
}

/// Why bytes are not a resource usage file. Hail's `decode_to_df` logs
/// and returns `None` in each of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header (including none: Hail returns no table).
    #[error("resource usage data is {len} bytes, expected at least the {HEADER_BYTES}-byte header at byte offset 0")]
    TooShort {
        /// Length of the data, bytes.
        len: usize,
    },
    /// The header's version is neither 1 nor 2.
    #[error("unsupported resource usage format version {version} at byte offset 0, expected 1 or {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The version read.
        version: i64,
    },
    /// The data ends inside a record.
    #[error("partial record at byte offset {offset}: {len} trailing bytes, expected a multiple of {record_bytes}-byte records (format version {version})")]
    PartialRecord {
        /// Byte offset where the partial record starts.
        offset: usize,
        /// Bytes left from `offset` to the end.
        len: usize,
        /// Size of one record of this version, bytes.
        record_bytes: usize,
        /// The header's version.
        version: i64,
    },
}

/// Decodes a whole file like Hail's `_decode_to_df`: the header's version
/// must be 1 or 2, and the records must fill the rest exactly.
///
/// Version 1 records hold time, memory and cpu only; their storage fields
/// decode as 0 and their network fields as NaN (missing: Hail's front end
/// fills these absent columns with `None`).
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let Some((head, body)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        return Err(DecodeError::TooShort { len: bytes.len() });
    };
    let version = i64::from_be_bytes(*head);
    let record_bytes = match version {
        1 => RECORD_V1_BYTES,
        FORMAT_VERSION => RECORD_BYTES,
        _ => return Err(DecodeError::UnsupportedVersion { version }),
    };
    let chunks = body.chunks_exact(record_bytes);
    let rest = chunks.remainder().len();
    if rest != 0 {
        return Err(DecodeError::PartialRecord {
            offset: bytes.len() - rest,
            len: rest,
            record_bytes,
            version,
        });
    }
    Ok(chunks.map(Record::decode_chunk).collect())
}

/// Raw counters read at one instant, the inputs of one Hail `measure()`.
/// `None` means the reading is unavailable (e.g. the cgroup file is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readings {
    /// Wall clock, ms since the Unix epoch (Hail's `time_msecs()`): record time, network clock.
    pub time_ms: i64,
    /// Monotonic clock, ns (Hail's `time_ns()`, `time.monotonic_ns()`): the cpu rate's clock.
    pub monotonic_ns: u64,
    /// cgroup v2 `memory.current`, bytes.
    pub memory_bytes: Option<i64>,
    /// cgroup v2 `cpu.stat` `usage_usec`, usec of cpu time since creation.
    pub cpu_usage_usec: Option<u64>,
    /// Overlay usage minus `/io` usage (overlay alone for an attached disk), bytes.
    pub non_io_storage_bytes: i64,
    /// `/io` mount usage, bytes (0 without one).
    pub io_storage_bytes: i64,
    /// Bytes sent by the task (Hail: iptables mangle rules with the veth as in-interface).
    pub net_up_bytes: Option<u64>,
    /// Bytes received by the task (rules whose out-interface is the veth).
    pub net_down_bytes: Option<u64>,
}

/// Turns successive [`Readings`] of one task into [`Record`]s with Hail's
/// arithmetic (`percent_cpu_usage`, `network_bandwidth`, `measure`).
///
/// A sample becomes a record when memory and cpu are readable and a
/// previous cpu reading exists (Hail: `percent_cpu_usage` clears its
/// previous reading when cpu is unreadable, so the sample after an
/// unreadable one has no rate either). Network: when both counters are
/// present, as in Hail the first sample that gets that far only sets the
/// baseline (so the first two samples never write a record); when either is
/// `None` the record is still written with both network fields NaN (Hail
/// would skip it; see [`Record`]) and the baseline is kept, as Hail keeps it
/// when `iptables` fails. A zero time delta, where Python would raise
/// `ZeroDivisionError`, writes nothing and keeps the previous readings.
/// Deltas are taken as signed numbers, as in Python: a counter or a wall
/// clock that goes back gives a negative rate. Rates are exact
/// (correctly rounded, as Python's `int / int`) while deltas stay below 2^53.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    /// Previous cpu reading: (`usage_usec`, monotonic ns).
    last_cpu: Option<(u64, u64)>,
    /// Previous network reading: (up bytes, down bytes, wall ms).
    last_net: Option<(u64, u64, i64)>,
}

impl Sampler {
    /// A sampler with no previous reading.
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// Feeds one sample; returns the record Hail's `measure` would write
    /// for it (with the network exception documented on [`Sampler`]).
    pub fn sample(&mut self, r: Readings) -> Option<Record> {
        let cpu = r.cpu_usage_usec.map(|usec| (usec, r.monotonic_ns));
        let cpu_usage = match (cpu, self.last_cpu) {
            (Some((usec, ns)), Some((last_usec, last_ns))) => {
                let dns = i128::from(ns) - i128::from(last_ns);
                if dns == 0 {
                    return None;
                }
                let dcpu_ns = (i128::from(usec) - i128::from(last_usec)) * 1000;
                Some(dcpu_ns as f64 / dns as f64)
            }
            _ => None,
        };
        // Unreadable cpu clears the previous reading, as in Hail.
        self.last_cpu = cpu;
        let (Some(memory_bytes), Some(cpu_usage)) = (r.memory_bytes, cpu_usage) else {
            return None;
        };
        let (network_upload, network_download) = match (r.net_up_bytes, r.net_down_bytes) {
            (Some(up), Some(down)) => {
                let Some((last_up, last_down, last_ms)) = self.last_net else {
                    self.last_net = Some((up, down, r.time_ms));
                    return None;
                };
                let dms = i128::from(r.time_ms) - i128::from(last_ms);
                if dms == 0 {
                    return None;
                }
                self.last_net = Some((up, down, r.time_ms));
                let mib_s = |now: u64, last: u64| {
                    let per_ms = (i128::from(now) - i128::from(last)) as f64 / dms as f64;
                    per_ms / 1024.0 / 1024.0 * 1000.0
                };
                (mib_s(up, last_up), mib_s(down, last_down))
            }
            _ => (f64::NAN, f64::NAN),
        };
        Some(Record {
            time_ms: r.time_ms,
            memory_bytes,
            cpu_usage,
            non_io_storage_bytes: r.non_io_storage_bytes,
            io_storage_bytes: r.io_storage_bytes,
            network_upload,
            network_download,
        })
    }
}

/// How long to sleep after a measurement (Hail's `periodically_measure`):
/// 100 ms while less than 5 s have passed since the monitor started
/// (`started`), then Hail's `sleep_before_try(tries, max_delay_ms=5000)`.
///
/// `tries` counts the measurements made so far, this one included (Hail
/// increments it before sleeping). Hail's `delay_ms_for_try` is jittered:
/// with `ceiling = 1000 ms * 2^min(tries, 30)` it picks
/// `ceiling / 2 + randrange(ceiling / 2 + 1)` ms, capped at 5000 ms; here
/// `jitter` in `[0, 1)` stands for the random draw (`floor(jitter * n)` for
/// `randrange(n)`; out-of-range or NaN values are clamped). From `tries` 4
/// on the result is always the 5 s cap, so in practice (about 50
/// measurements in the first 5 s) a sample every 100 ms plus the
/// measurement's time, then every 5 s.
pub fn next_delay(started: Duration, tries: u32, jitter: f64) -> Duration {
    const BASE_DELAY_MS: u64 = 1000;
    const MAX_DELAY_MS: u64 = 5000;
    if started < Duration::from_millis(5000) {
        return Duration::from_millis(100);
    }
    let ceiling = BASE_DELAY_MS << tries.min(30);
    let n = ceiling / 2 + 1;
    // `as` saturates: NaN and negatives give 0, the `min` keeps it below n.
    let pick = ((jitter * n as f64) as u64).min(n - 1);
    Duration::from_millis((ceiling / 2 + pick).min(MAX_DELAY_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/samples/hail/");

    fn sample() -> Vec<u8> {
        std::fs::read(format!("{SAMPLES}resource_usage-v2.bin")).expect("sample file")
    }

    /// resource_usage.md's decoded table.
    fn table() -> Vec<Record> {
        [
            (200, 52428800, 0.97, 1433600, 8192, 20.0),
            (300, 54525952, 0.98, 1556480, 16384, 20.0),
            (400, 54525952, 0.97, 507904, 1064960, 10.0),
        ]
        .map(|(t, mem, cpu, non_io, io, down)| Record {
            time_ms: 1_700_000_000_000 + t,
            memory_bytes: mem,
            cpu_usage: cpu,
            non_io_storage_bytes: non_io,
            io_storage_bytes: io,
            network_upload: 0.09765625,
            network_download: down,
        })
        .to_vec()
    }

    fn encode_all(records: &[Record]) -> Vec<u8> {
        let mut out = header().to_vec();
        records.iter().for_each(|r| out.extend(r.encode()));
        out
    }

    #[test]
    fn encode_and_decode_match_sample() {
        assert_eq!(sample().len(), HEADER_BYTES + 3 * RECORD_BYTES);
        assert_eq!(encode_all(&table()), sample());
        assert_eq!(decode(&sample()), Ok(table()));
        assert_eq!(decode(&no_data()), Ok(vec![]));
    }

    #[test]
    fn base64_no_data_and_endpoint_sample() {
        assert_eq!(to_base64(&no_data()), "AAAAAAAAAAI=");
        let json = std::fs::read_to_string(format!("{SAMPLES}resource_usage.json")).expect("json");
        let field = |name: &str| {
            let key = format!("\"{name}\": \"");
            let start = json.find(&key).expect("key") + key.len();
            let len = json[start..].find('"').expect("end quote");
            json[start..start + len].to_string()
        };
        assert_eq!(
            [field("input"), field("output")],
            ["AAAAAAAAAAI=", "AAAAAAAAAAI="]
        );
        assert_eq!(field("main"), to_base64(&sample()));
        let main = base64::engine::general_purpose::STANDARD.decode(field("main"));
        assert_eq!(decode(&main.expect("base64")), Ok(table()));
    }

    /// Five samples 100 ms apart. Counter deltas chosen so Hail's arithmetic
    /// gives the table's f64s exactly (compared bit for bit): cpu 97_000 usec
    /// per 100 ms = 0.97; upload 10_240 bytes per 100 ms = 0.09765625 MiB/s;
    /// download 2 MiB per 100 ms = 20 MiB/s.
    fn readings() -> Vec<Readings> {
        // (cpu usec, up bytes, down bytes, memory, non-io, io), 100 ms apart.
        [
            (5_000_000, 1_000, 50_000, 48 << 20, 1 << 20, 0),
            (5_095_000, 5_096, 51_000, 50 << 20, 1 << 20, 4096),
            (5_192_000, 15_336, 2_148_152, 52428800, 1433600, 8192),
            (5_290_000, 25_576, 4_245_304, 54525952, 1556480, 16384),
            (5_387_000, 35_816, 5_293_880, 54525952, 507904, 1064960),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (usec, up, down, mem, non_io, io))| Readings {
            time_ms: 1_700_000_000_000 + 100 * i as i64,
            monotonic_ns: 7_000_000_000 + 100_000_000 * i as u64,
            memory_bytes: Some(mem),
            cpu_usage_usec: Some(usec),
            non_io_storage_bytes: non_io,
            io_storage_bytes: io,
            net_up_bytes: Some(up),
            net_down_bytes: Some(down),
        })
        .collect()
    }

    #[test]
    fn sampler_reproduces_sample() {
        let mut s = Sampler::new();
        let records: Vec<Record> = readings().into_iter().filter_map(|r| s.sample(r)).collect();
        assert_eq!(records, table());
        assert_eq!(encode_all(&records), sample());
    }

    #[test]
    fn sampler_without_network_writes_nan() {
        let mut s = Sampler::new();
        let mut records = Vec::new();
        for mut r in readings() {
            r.net_up_bytes = None;
            records.extend(s.sample(r));
        }
        // Only cpu needs a previous reading: a record from the second sample on.
        assert_eq!((records.len(), records[1].cpu_usage), (4, 0.97));
        let nan = [0x7f, 0xf8, 0, 0, 0, 0, 0, 0];
        for r in &records {
            assert!(r.network_upload.is_nan() && r.network_download.is_nan());
            assert_eq!(r.encode()[40..], [nan, nan].concat());
        }
        let back = decode(&encode_all(&records)).expect("decode");
        assert!(back[0].network_upload.is_nan() && back[0].network_download.is_nan());
        assert_eq!(back[0].time_ms, records[0].time_ms);
    }

    /// `r`, `ms` later on both clocks, with `usec` more cpu and `down` more bytes received.
    fn later(r: Readings, ms: u64, usec: u64, down: u64) -> Readings {
        Readings {
            time_ms: r.time_ms + ms as i64,
            monotonic_ns: r.monotonic_ns + ms * 1_000_000,
            cpu_usage_usec: r.cpu_usage_usec.map(|u| u + usec),
            net_down_bytes: r.net_down_bytes.map(|d| d + down),
            ..r
        }
    }

    #[test]
    fn sampler_skips_unreadable_and_zero_delta() {
        let rs = readings();
        let mut s = Sampler::new();
        let (mut no_cpu, mut no_memory) = (rs[1], rs[3]);
        (no_cpu.cpu_usage_usec, no_memory.memory_bytes) = (None, None);
        // rs[0] sets the cpu baseline, no_cpu clears it, rs[2] sets it again;
        // no_memory advances it without a record; rs[4] sets the network
        // baseline; rs[4] again is a zero monotonic delta.
        for r in [rs[0], no_cpu, rs[2], no_memory, rs[4], rs[4]] {
            assert_eq!(s.sample(r), None);
        }
        // A zero wall-clock delta (network): no record, the cpu baseline moves.
        let mut same_ms = later(rs[4], 50, 0, 0);
        same_ms.time_ms = rs[4].time_ms;
        assert_eq!(s.sample(same_ms), None);
        let r = s.sample(later(rs[4], 100, 50_000, 1 << 20));
        let rates = r.map(|r| (r.cpu_usage, r.network_upload, r.network_download));
        assert_eq!(rates, Some((1.0, 0.0, 10.0)));
        // A counter going back gives a negative rate, as in Python.
        let r = s.sample(later(rs[4], 200, 50_000, 0)).expect("record");
        assert_eq!(r.network_download, -10.0);
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::TooShort { len: 0 }));
        assert_eq!(decode(&[0; 7]), Err(DecodeError::TooShort { len: 7 }));
        for version in [0i64, 3, -1] {
            let err = decode(&version.to_be_bytes());
            assert_eq!(err, Err(DecodeError::UnsupportedVersion { version }));
        }
        let err = decode(&sample()[..175]).expect_err("partial");
        let want = "partial record at byte offset 120: 55 trailing bytes, expected a multiple \
                    of 56-byte records (format version 2)";
        assert_eq!(err.to_string(), want);
        // Version 1: 24-byte records.
        let mut v1 = 1i64.to_be_bytes().to_vec();
        v1.extend_from_slice(&table()[0].encode()[..24]);
        let r = decode(&v1).expect("v1")[0];
        let t = table()[0];
        let want = (t.time_ms, t.memory_bytes, t.cpu_usage);
        assert_eq!((r.time_ms, r.memory_bytes, r.cpu_usage), want);
        assert_eq!((r.non_io_storage_bytes, r.io_storage_bytes), (0, 0));
        assert!(r.network_upload.is_nan() && r.network_download.is_nan());
        v1.push(0);
        let want = (32, 1, 24, 1);
        match decode(&v1) {
            Err(DecodeError::PartialRecord {
                offset,
                len,
                record_bytes,
                version,
            }) => {
                assert_eq!((offset, len, record_bytes, version), want)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn next_delay_schedule() {
        let ms = |started, tries, jitter| next_delay(Duration::from_millis(started), tries, jitter);
        assert_eq!(ms(0, 1, 0.5), Duration::from_millis(100));
        assert_eq!(ms(4999, 49, 0.0), Duration::from_millis(100));
        // (tries, jitter, delay ms) once 5 s have passed.
        let after_5s = [
            (0, 0.0, 500),
            (0, 0.9999, 1000),
            (1, 0.0, 1000),
            (1, 0.9999, 2000),
            (1, f64::NAN, 1000),
            (1, 7.0, 2000),
            (2, 0.5, 3000),
            (3, 0.0, 4000),
            (3, 0.9, 5000),
        ];
        for (tries, jitter, want) in after_5s {
            let got = ms(5000, tries, jitter).as_millis();
            assert_eq!(got, want, "{tries} {jitter}");
        }
        for tries in [4, 50, 1000, u32::MAX] {
            for jitter in [0.0, 0.5, 0.9999, 1.0, -1.0, f64::NAN] {
                assert_eq!(ms(60_000, tries, jitter).as_millis(), 5000);
            }
        }
    }
}
