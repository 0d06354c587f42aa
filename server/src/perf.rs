//! `odradek perf disk`: the storage engine on the real disk, beside `dd`.
//!
//! Two ways of making appends durable are measured on the real
//! [`Log`] over [`FsDisk`]:
//!
//! * sync per batch — one writer, append then fsync, the floor every
//!   `acks=all`, `flush.messages=1` deployment pays;
//! * group commit — W writers hand batches to the one thread that owns the
//!   log, which appends everything queued and fsyncs once for all of them.
//!
//! `dd` runs in the same directory in the same run, so the figures can be
//! read against what the device does with no log in the way.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use odradek_core::buggify::Buggify;
use odradek_core::io::Disk;
use odradek_core::storage::batch::{BatchBuilder, HEADER_SIZE};
use odradek_core::storage::group_commit::PendingAcks;
use odradek_core::storage::{FlushPolicy, Log, LogConfig};
use serde_json::{json, Value};

use crate::disk::FsDisk;

/// Batches larger than this would only measure memory copies.
const MAX_BATCH_BYTES: usize = 16 << 20;

#[derive(Args, Debug, Clone)]
pub struct DiskArgs {
    /// Where to benchmark; a fresh subdirectory is made there and removed
    /// afterwards [default: ./target if it exists, else the temp directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Encoded size of each record batch.
    #[arg(long, default_value_t = 16384, value_parser = parse_batch_bytes)]
    pub batch_bytes: usize,
    /// How long each log mode runs.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Concurrent writers in the group-commit mode.
    #[arg(long, default_value = "4")]
    pub writers: NonZeroUsize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_batch_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    // Below a header plus a record there is nothing to measure.
    if !(HEADER_SIZE + 16..=MAX_BATCH_BYTES).contains(&n) {
        return Err(format!(
            "batch size must be between {} and {MAX_BATCH_BYTES} bytes",
            HEADER_SIZE + 16
        ));
    }
    Ok(n)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(x.is_finite() && x > 0.0 && x <= 3600.0) {
        return Err("seconds must be above 0 and at most 3600".to_string());
    }
    Ok(x)
}

/// The benchmark's own directory, removed however the run ends.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(base: Option<&Path>) -> io::Result<WorkDir> {
        let pid = std::process::id();
        let path = match base {
            Some(base) => base.join(format!("odradek-perf-disk-{pid}")),
            // ./target is on the disk the project lives on; the temp
            // directory is often tmpfs, where fsync measures nothing.
            None if Path::new("target").is_dir() => {
                PathBuf::from(format!("target/perf-disk-{pid}"))
            }
            None => std::env::temp_dir().join(format!("odradek-perf-disk-{pid}")),
        };
        fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        fs::create_dir(&path)?;
        let path = path.canonicalize()?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the benchmark directory");
        }
    }
}

/// The mount a path lives on, from /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Picks the mount with the longest mount point containing `path` (which
/// must be canonical). Later lines win ties: they are mounted over earlier
/// ones.
pub fn find_mount(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < dash + 3 {
            continue;
        }
        let mount_point = unescape_mount(fields[4]);
        if !path.starts_with(&mount_point) {
            continue;
        }
        let longer = match &best {
            Some(b) => mount_point.len() >= b.mount_point.len(),
            None => true,
        };
        if longer {
            best = Some(Mount {
                mount_point,
                fs_type: fields[dash + 1].to_string(),
                source: unescape_mount(fields[dash + 2]),
            });
        }
    }
    best
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A batch of about `target` encoded bytes, with the record count and value
/// size used. Values are pseudo-random so that a compressing file system
/// cannot make the disk look faster than it is.
pub fn build_batch(target: usize, timestamp: i64) -> (Vec<u8>, usize, usize) {
    let records = (target / 1024).max(1);
    // Roughly ten bytes of varints and attributes per record; corrected by
    // measuring below.
    let mut value_len = (target.saturating_sub(HEADER_SIZE) / records).saturating_sub(10);
    let mut noise = vec![0u8; 0];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut batch = Vec::new();
    for _ in 0..6 {
        let want = value_len * records;
        while noise.len() < want {
            // xorshift64: cheap filler that no compressor shrinks
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            noise.extend_from_slice(&state.to_le_bytes());
        }
        let mut builder = BatchBuilder::new(timestamp);
        for r in 0..records {
            let value = &noise[r * value_len..(r + 1) * value_len];
            builder = builder.add(None, Some(value), timestamp);
        }
        batch = builder.build();
        let diff = target as i64 - batch.len() as i64;
        if diff.unsigned_abs() < records as u64 {
            break;
        }
        value_len = (value_len as i64 + diff / records as i64).max(0) as usize;
    }
    // The remainder goes to the last record so that the batch is exactly the
    // size asked for (a varint growing a byte can take a few tries).
    let mut last_len = value_len;
    for _ in 0..4 {
        let diff = target as i64 - batch.len() as i64;
        if diff == 0 {
            break;
        }
        last_len = (last_len as i64 + diff).max(0) as usize;
        while noise.len() < value_len * (records - 1) + last_len {
            noise.push(noise.len() as u8);
        }
        let mut builder = BatchBuilder::new(timestamp);
        for r in 0..records {
            let len = if r + 1 == records {
                last_len
            } else {
                value_len
            };
            let value = &noise[r * value_len..r * value_len + len];
            builder = builder.add(None, Some(value), timestamp);
        }
        batch = builder.build();
    }
    (batch, records, value_len)
}

/// One measured way of making appends durable.
#[derive(Clone, Debug)]
pub struct ModeResult {
    pub name: String,
    pub appends: u64,
    pub syncs: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Append-to-durable latency of every append, sorted.
    pub latencies: Vec<Duration>,
}

impl ModeResult {
    pub fn appends_per_s(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn batches_per_sync(&self) -> f64 {
        self.appends as f64 / (self.syncs.max(1)) as f64
    }

    pub fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    fn to_json(&self) -> Value {
        json!({
            "mode": self.name,
            "appends": self.appends,
            "syncs": self.syncs,
            "bytes": self.bytes,
            "seconds": self.elapsed.as_secs_f64(),
            "appends_per_s": round(self.appends_per_s(), 1),
            "mb_per_s": round(self.mb_per_s(), 2),
            "batches_per_sync": round(self.batches_per_sync(), 2),
            "p50_ms": round(ms(self.percentile(0.50)), 3),
            "p99_ms": round(ms(self.percentile(0.99)), 3),
        })
    }
}

/// Nearest-rank percentile of sorted samples; zero when there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn log_config() -> LogConfig {
    let defaults = LogConfig::default();
    LogConfig {
        // The benchmark decides when to sync; that is what it measures.
        flush: FlushPolicy::Never,
        max_message_bytes: defaults.max_message_bytes.max(MAX_BATCH_BYTES),
        ..defaults
    }
}

fn open_log(disk: &FsDisk, dir: &str) -> Result<Log<FsDisk>, String> {
    disk.create_dir_all(dir)
        .map_err(|e| format!("creating {dir}: {e}"))?;
    Log::open(disk.clone(), dir, log_config(), Buggify::disabled())
        .map_err(|e| format!("opening the log in {dir}: {e}"))
}

/// Appends, then flushes, and checks that the log now calls the batch
/// durable: an ack the log cannot back would make every figure a lie.
fn append_durably(log: &mut Log<FsDisk>, batches: &[&[u8]]) -> Result<(), String> {
    let mut last = None;
    for b in batches {
        let info = log
            .append(b, now_ms())
            .map_err(|e| format!("append: {e}"))?;
        last = Some(info.last_offset);
    }
    log.flush().map_err(|e| format!("flush: {e}"))?;
    if let Some(last) = last {
        let durable = log.durable_end();
        if durable <= last {
            return Err(format!(
                "flush returned but durable_end {durable} does not cover offset {last}"
            ));
        }
    }
    Ok(())
}

/// One thread: append a batch, fsync, repeat.
pub fn sync_per_batch(
    disk: &FsDisk,
    dir: &str,
    batch: &[u8],
    duration: Duration,
) -> Result<ModeResult, String> {
    let mut log = open_log(disk, dir)?;
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        append_durably(&mut log, &[batch])?;
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    log.close().map_err(|e| format!("closing the log: {e}"))?;
    latencies.sort_unstable();
    let appends = latencies.len() as u64;
    Ok(ModeResult {
        name: "sync per batch".to_string(),
        appends,
        syncs: appends,
        bytes: appends * batch.len() as u64,
        elapsed,
        latencies,
    })
}

struct Request {
    batch: Arc<Vec<u8>>,
    reply: mpsc::Sender<Result<(), String>>,
}

/// Counts from the thread that owns the log.
struct LogThreadStats {
    appends: u64,
    syncs: u64,
    bytes: u64,
}

/// The log's owner: take one request (blocking), everything else already
/// queued, append them all, sync once, ack them all. The queue fills while a
/// sync is in flight, so batches per sync grows with load by itself.
fn log_thread(
    disk: FsDisk,
    dir: String,
    requests: mpsc::Receiver<Request>,
) -> Result<LogThreadStats, String> {
    // Opened here so that the log never has to cross threads.
    let mut log = open_log(&disk, &dir)?;
    let mut stats = LogThreadStats {
        appends: 0,
        syncs: 0,
        bytes: 0,
    };
    let mut acks = PendingAcks::new();
    while let Ok(first) = requests.recv() {
        let mut queued = vec![first];
        while let Ok(more) = requests.try_recv() {
            queued.push(more);
        }
        let mut failure = None;
        for r in queued {
            match log.append(&r.batch, now_ms()) {
                Ok(info) => {
                    stats.appends += 1;
                    stats.bytes += r.batch.len() as u64;
                    acks.push(info.last_offset, r.reply);
                }
                Err(e) => {
                    let _ = r.reply.send(Err(format!("append: {e}")));
                    failure = Some(format!("append: {e}"));
                }
            }
        }
        // One sync for everything appended since the last one.
        let synced = log.flush().map_err(|e| format!("flush: {e}"));
        stats.syncs += 1;
        let (released, result) = match synced {
            Ok(durable_end) => (acks.release(durable_end), Ok(())),
            Err(e) => (acks.fail_all(), Err(e)),
        };
        for reply in released {
            // A writer that has gone away needs no ack.
            let _ = reply.send(result.clone());
        }
        if !acks.is_empty() {
            return Err(format!(
                "{} appends not covered by the sync that followed them",
                acks.len()
            ));
        }
        result?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
    log.close().map_err(|e| format!("closing the log: {e}"))?;
    Ok(stats)
}

/// `writers` threads, each sending one batch at a time to the log thread and
/// waiting for the ack that it is durable.
pub fn group_commit(
    disk: &FsDisk,
    dir: &str,
    batch: &[u8],
    writers: usize,
    duration: Duration,
) -> Result<ModeResult, String> {
    let batch = Arc::new(batch.to_vec());
    let (tx, rx) = mpsc::channel::<Request>();
    let start = Instant::now();
    let (stats, latencies, elapsed) = std::thread::scope(|s| {
        let owner = {
            let disk = disk.clone();
            let dir = dir.to_string();
            s.spawn(move || log_thread(disk, dir, rx))
        };
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let tx = tx.clone();
                let batch = Arc::clone(&batch);
                s.spawn(move || -> Result<Vec<Duration>, String> {
                    let (reply_tx, reply_rx) = mpsc::channel();
                    let mut latencies = Vec::new();
                    while start.elapsed() < duration {
                        let t = Instant::now();
                        let req = Request {
                            batch: Arc::clone(&batch),
                            reply: reply_tx.clone(),
                        };
                        // A closed channel means the log thread stopped on
                        // an error, which it reports itself.
                        if tx.send(req).is_err() {
                            break;
                        }
                        match reply_rx.recv() {
                            Ok(Ok(())) => latencies.push(t.elapsed()),
                            Ok(Err(e)) => return Err(e),
                            Err(_) => break,
                        }
                    }
                    Ok(latencies)
                })
            })
            .collect();
        // Once every writer's sender is gone the log thread's recv fails and
        // it returns.
        drop(tx);
        let mut latencies = Vec::new();
        let mut writer_error = None;
        for h in handles {
            match h.join() {
                Ok(Ok(l)) => latencies.extend(l),
                Ok(Err(e)) => writer_error = Some(e),
                Err(_) => writer_error = Some("a writer thread panicked".to_string()),
            }
        }
        let elapsed = start.elapsed();
        let stats = owner
            .join()
            .map_err(|_| "the log thread panicked".to_string())
            .and_then(|r| r);
        match (stats, writer_error) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok(stats), None) => Ok((stats, latencies, elapsed)),
        }
    })?;
    let mut latencies = latencies;
    latencies.sort_unstable();
    Ok(ModeResult {
        name: format!("group commit, {writers} writers"),
        appends: stats.appends,
        syncs: stats.syncs,
        bytes: stats.bytes,
        elapsed,
        latencies,
    })
}

/// What one dd run reported.
#[derive(Clone, Debug, PartialEq)]
pub struct DdRate {
    pub bytes: u64,
    pub seconds: f64,
    /// dd's own summary line, as printed.
    pub line: String,
}

impl DdRate {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Parses dd's closing line, e.g.
/// `268435456 bytes (268 MB, 256 MiB) copied, 0.46 s, 584 MB/s`.
pub fn parse_dd(stderr: &str) -> Option<DdRate> {
    let line = stderr.lines().rev().find(|l| l.contains(" copied, "))?;
    let bytes = line.split_whitespace().next()?.parse().ok()?;
    let seconds = line
        .split(", ")
        .find_map(|part| part.trim().strip_suffix(" s")?.trim().parse::<f64>().ok())?;
    Some(DdRate {
        bytes,
        seconds,
        line: line.trim().to_string(),
    })
}

/// One dd run writing `name` in `dir`, with the given extra operands.
#[derive(Clone, Debug)]
pub struct DdRun {
    /// Stable name for the JSON output.
    pub key: String,
    pub label: String,
    pub command: String,
    /// Number of write calls dd made (its `count`).
    pub writes: u64,
    pub result: Result<DdRate, String>,
}

impl DdRun {
    fn to_json(&self) -> Value {
        match &self.result {
            Ok(r) => json!({
                "command": self.command,
                "bytes": r.bytes,
                "seconds": r.seconds,
                "mb_per_s": round(r.mb_per_s(), 1),
                "writes_per_s": round(self.writes as f64 / r.seconds.max(1e-9), 1),
                "dd_says": r.line,
            }),
            Err(e) => json!({ "command": self.command, "error": e }),
        }
    }
}

fn run_dd(
    dir: &Path,
    key: &str,
    label: &str,
    name: &str,
    bs: &str,
    count: u64,
    flag: &str,
) -> DdRun {
    let target = dir.join(name);
    let args = vec![
        "if=/dev/zero".to_string(),
        format!("of={}", target.display()),
        format!("bs={bs}"),
        format!("count={count}"),
        flag.to_string(),
    ];
    let command = format!("dd {}", args.join(" "));
    tracing::info!(%command, "running dd");
    let result = Command::new("dd")
        .args(&args)
        // dd's numbers are parsed: keep them in the C locale's format.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run dd: {e}"))
        .and_then(|out| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                return Err(format!("dd failed ({}): {}", out.status, stderr.trim()));
            }
            parse_dd(&stderr)
                .ok_or_else(|| format!("could not parse dd's output: {}", stderr.trim()))
        });
    let _ = fs::remove_file(&target);
    DdRun {
        key: key.to_string(),
        label: label.to_string(),
        command,
        writes: count,
        result,
    }
}

/// Everything one `odradek perf disk` run measured.
pub struct DiskReport {
    pub nproc: usize,
    pub directory: PathBuf,
    pub mount: Option<Mount>,
    pub batch_bytes: usize,
    pub records_per_batch: usize,
    pub value_bytes: usize,
    pub seconds: f64,
    pub writers: usize,
    pub modes: Vec<ModeResult>,
    pub dd: Vec<DdRun>,
}

impl DiskReport {
    pub fn to_json(&self) -> Value {
        json!({
            "nproc": self.nproc,
            "directory": self.directory.display().to_string(),
            "filesystem": self.mount.as_ref().map(|m| json!({
                "type": m.fs_type,
                "source": m.source,
                "mount_point": m.mount_point,
            })),
            "batch_bytes": self.batch_bytes,
            "records_per_batch": self.records_per_batch,
            "value_bytes": self.value_bytes,
            "seconds_per_mode": self.seconds,
            "writers": self.writers,
            "modes": self.modes.iter().map(ModeResult::to_json).collect::<Vec<_>>(),
            "dd": self.dd.iter().map(|d| (d.key.clone(), d.to_json())).collect::<serde_json::Map<_, _>>(),
        })
    }

    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let fs = match &self.mount {
            Some(m) => format!(
                "{} on {} (mounted at {})",
                m.fs_type, m.source, m.mount_point
            ),
            None => "unknown".to_string(),
        };
        let _ = writeln!(
            t,
            "odradek perf disk: {}-byte batches ({} records of {}-byte values), {} s per mode",
            self.batch_bytes, self.records_per_batch, self.value_bytes, self.seconds
        );
        let _ = writeln!(t, "  directory   {}", self.directory.display());
        let _ = writeln!(t, "  filesystem  {fs}");
        let _ = writeln!(t, "  nproc       {}", self.nproc);
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<38} {:>11} {:>9} {:>13} {:>9} {:>9}",
            "mode", "appends/s", "MB/s", "batches/sync", "p50 ms", "p99 ms"
        );
        for m in &self.modes {
            let _ = writeln!(
                t,
                "{:<38} {:>11.1} {:>9.1} {:>13.2} {:>9.3} {:>9.3}",
                format!("log, {}", m.name),
                m.appends_per_s(),
                m.mb_per_s(),
                m.batches_per_sync(),
                ms(m.percentile(0.50)),
                ms(m.percentile(0.99)),
            );
        }
        for d in &self.dd {
            match &d.result {
                Ok(r) => {
                    let _ = writeln!(
                        t,
                        "{:<38} {:>11.1} {:>9.1} {:>13} {:>9} {:>9}",
                        d.label,
                        d.writes as f64 / r.seconds.max(1e-9),
                        r.mb_per_s(),
                        "-",
                        "-",
                        "-"
                    );
                }
                Err(e) => {
                    let _ = writeln!(t, "{:<38} {e}", d.label);
                }
            }
        }
        let _ = writeln!(t);
        for d in &self.dd {
            let said = match &d.result {
                Ok(r) => r.line.clone(),
                Err(e) => e.clone(),
            };
            let _ = writeln!(t, "{}", d.command);
            let _ = writeln!(t, "  -> {said}");
        }
        t
    }
}

/// `odradek perf disk`.
pub fn cmd_disk(args: &DiskArgs) -> Result<(), String> {
    let work = WorkDir::create(args.dir.as_deref())
        .map_err(|e| format!("creating the benchmark directory: {e}"))?;
    let report = measure(&work.path, args)?;
    if args.json {
        crate::outln!("{}", report.to_json());
    } else {
        crate::out!("{}", report.to_table());
    }
    Ok(())
}

fn measure(dir: &Path, args: &DiskArgs) -> Result<DiskReport, String> {
    let nproc = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mount = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| find_mount(&info, dir));
    let disk = FsDisk::new(dir.to_path_buf());
    let (batch, records, value_len) = build_batch(args.batch_bytes, now_ms());
    let duration = Duration::from_secs_f64(args.seconds);
    let writers = args.writers.get();

    tracing::info!(dir = %dir.display(), batch = batch.len(), seconds = args.seconds, "log: sync per batch");
    let single = sync_per_batch(&disk, "perf/sync-per-batch", &batch, duration)?;
    // Free the space before the next mode; the log is closed by now.
    let _ = fs::remove_dir_all(dir.join("perf/sync-per-batch"));

    tracing::info!(writers, "log: group commit");
    let group = group_commit(&disk, "perf/group-commit", &batch, writers, duration)?;
    let _ = fs::remove_dir_all(dir.join("perf/group-commit"));

    let dd = vec![
        run_dd(
            dir,
            "dsync_16k",
            "dd bs=16k oflag=dsync (2000 writes)",
            "dd-dsync.bin",
            "16k",
            2000,
            "oflag=dsync",
        ),
        run_dd(
            dir,
            "fdatasync_1m",
            "dd bs=1M conv=fdatasync (256 MiB)",
            "dd.bin",
            "1M",
            256,
            "conv=fdatasync",
        ),
    ];

    Ok(DiskReport {
        nproc,
        directory: dir.to_path_buf(),
        mount,
        batch_bytes: batch.len(),
        records_per_batch: records,
        value_bytes: value_len,
        seconds: args.seconds,
        writers,
        modes: vec![single, group],
        dd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use odradek_core::storage::batch::validate;

    #[test]
    fn batches_come_out_at_the_asked_size() {
        for target in [77, 200, 1000, 4096, 16384, 100_000, 1 << 20] {
            let (batch, records, _) = build_batch(target, 1_700_000_000_000);
            validate(&batch).expect("a valid batch");
            assert_eq!(batch.len(), target, "{records} records");
        }
        let (_, records, value) = build_batch(16384, 0);
        assert_eq!(records, 16);
        assert!((990..1024).contains(&value), "{value}");
    }

    #[test]
    fn percentiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn dd_output() {
        let out = "256+0 records in\n256+0 records out\n\
                   268435456 bytes (268 MB, 256 MiB) copied, 0.462 s, 581 MB/s\n";
        let r = parse_dd(out).unwrap();
        assert_eq!(r.bytes, 268_435_456);
        assert!((r.seconds - 0.462).abs() < 1e-9);
        assert!(r.line.ends_with("581 MB/s"));
        // older coreutils
        let r = parse_dd("1024 bytes (1.0 kB) copied, 2.5e-05 s, 41 MB/s").unwrap();
        assert_eq!(r.bytes, 1024);
        assert!((r.seconds - 2.5e-5).abs() < 1e-12);
        assert!(parse_dd("dd: error writing: No space left on device").is_none());
    }

    #[test]
    fn mounts() {
        let info = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /tmp rw shared:2 - tmpfs tmpfs rw
31 22 0:27 / /mnt/my\\040disk rw shared:3 - xfs /dev/sdb1 rw
";
        let m = find_mount(info, Path::new("/work/main/target")).unwrap();
        assert_eq!((m.fs_type.as_str(), m.mount_point.as_str()), ("ext4", "/"));
        let m = find_mount(info, Path::new("/tmp/x")).unwrap();
        assert_eq!(m.fs_type, "tmpfs");
        let m = find_mount(info, Path::new("/mnt/my disk/x")).unwrap();
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_str()),
            ("xfs", "/dev/sdb1")
        );
        // a path component that merely starts with a mount point's name
        let m = find_mount(info, Path::new("/tmpfoo")).unwrap();
        assert_eq!(m.mount_point, "/");
    }

    #[test]
    fn both_modes_run_on_a_real_log() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::new(dir.path().to_path_buf());
        let (batch, _, _) = build_batch(4096, now_ms());
        let d = Duration::from_millis(200);

        let single = sync_per_batch(&disk, "a", &batch, d).unwrap();
        assert!(single.appends > 0);
        assert_eq!(single.syncs, single.appends);
        assert_eq!(single.latencies.len() as u64, single.appends);

        let group = group_commit(&disk, "b", &batch, 3, d).unwrap();
        assert!(group.appends > 0);
        assert!(group.syncs > 0 && group.syncs <= group.appends);
        assert_eq!(group.latencies.len() as u64, group.appends);
        assert_eq!(group.bytes, group.appends * batch.len() as u64);

        // The group-commit log holds every acknowledged batch after reopening.
        let log = open_log(&disk, "b").unwrap();
        assert_eq!(log.durable_end(), group.appends as i64 * 4);
    }

    #[test]
    fn report_renders() {
        let m = ModeResult {
            name: "sync per batch".into(),
            appends: 10,
            syncs: 5,
            bytes: 163_840,
            elapsed: Duration::from_secs(1),
            latencies: vec![Duration::from_millis(2); 10],
        };
        let r = DiskReport {
            nproc: 2,
            directory: PathBuf::from("/x"),
            mount: None,
            batch_bytes: 16384,
            records_per_batch: 16,
            value_bytes: 1012,
            seconds: 1.0,
            writers: 4,
            modes: vec![m],
            dd: vec![DdRun {
                key: "dd".into(),
                label: "dd".into(),
                command: "dd if=/dev/zero".into(),
                writes: 2,
                result: Ok(DdRate {
                    bytes: 2_000_000,
                    seconds: 0.5,
                    line: "said".into(),
                }),
            }],
        };
        let v = r.to_json();
        assert_eq!(v["modes"][0]["batches_per_sync"], 2.0);
        assert_eq!(v["modes"][0]["p99_ms"], 2.0);
        assert_eq!(v["dd"]["dd"]["mb_per_s"], 4.0);
        let t = r.to_table();
        assert!(t.contains("log, sync per batch"), "{t}");
        assert!(t.contains("nproc       2"), "{t}");
    }
}
