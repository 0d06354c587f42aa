//! The storage workload: one node's partition logs on a faulty simulated
//! disk. Clients append, sync, read, look up by time, delete records,
//! truncate and apply retention, while the nemesis crashes the machine,
//! kills the process, jumps the clock and breaks the disk. A model of every
//! partition — each batch ever acknowledged, and whether as durable — is
//! checked against the log after every operation and every recovery.
//!
//! Invariants, named as the checker reports them:
//! * `lost-write`: a batch acknowledged as durable is missing after
//!   recovery (excused only where the disk itself damaged that segment's
//!   synced bytes: one copy of data cannot survive the loss of that copy);
//! * `inconsistent-offsets`: an offset reads back as different bytes than
//!   were written there, or offsets are not dense;
//! * `phantom-read`: the log returns a batch nobody wrote;
//! * `spurious-corruption`: a read refused as corrupt with no damage on the
//!   disk to explain it;
//! * `log-start-regressed`, `durable-end-regressed`, `state-mismatch`: the
//!   log's bookkeeping disagrees with what it promised before;
//! * `liveness`: after faults stop, the log does not come back, or cannot
//!   take and sync a write, within the liveness phase.

use crate::disk::SimDisk;
use crate::rng::{self, Stream};
use crate::trace::Trace;
use crate::{FaultKind, RunOptions, RunReport, Workload};
use odradek_core::buggify::Buggify;
use odradek_core::io::{Instant, Random, TimerQueue};
use odradek_core::storage::batch::{self, BatchBuilder};
use odradek_core::storage::checkpoint::LeaderEpochCache;
use odradek_core::storage::segment::parse_data_name;
use odradek_core::storage::{FlushPolicy, Log, LogConfig, LogError};
use odradek_nemesis::{Fault, Schedule, Swarm};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

const NODE: i32 = 1;
const MS: u64 = 1_000_000;
/// Simulated wall clock at time zero: 2026-01-01T00:00:00Z.
const EPOCH_WALL_MS: i64 = 1_767_225_600_000;

#[derive(Clone, Debug)]
struct ModelBatch {
    bytes: Vec<u8>,
    last: i64,
    durable: bool,
}

/// What the workload knows a partition must hold.
#[derive(Default)]
struct Model {
    batches: BTreeMap<i64, ModelBatch>,
    start: i64,
    end: i64,
    durable_end: i64,
    /// The epoch the next append is stamped with.
    epoch: i32,
    /// The leader-epoch history the log must keep, across crashes too.
    epochs: LeaderEpochCache,
    /// A truncation that failed part-way may have removed batches ending
    /// at or after this offset.
    maybe_truncated_from: Option<i64>,
    /// A deletion that failed part-way may have moved the start up to here.
    maybe_start: Option<i64>,
}

impl Model {
    fn mark_durable_below(&mut self, end: i64) {
        for b in self.batches.values_mut() {
            if b.last < end {
                b.durable = true;
            }
        }
        self.durable_end = self.durable_end.max(end);
    }

    /// Records a batch written at `base` in `epoch`, as the log stores it.
    /// Returns its last offset.
    fn record(&mut self, mut batch: Vec<u8>, base: i64, epoch: i32) -> i64 {
        batch::set_base_offset(&mut batch, base);
        batch::set_partition_leader_epoch(&mut batch, epoch);
        let last = batch::BatchHeader::parse(&batch)
            .expect("built")
            .last_offset();
        self.batches.insert(
            base,
            ModelBatch {
                bytes: batch,
                last,
                durable: false,
            },
        );
        self.epochs.assign(epoch, base);
        last
    }

    fn drop_below(&mut self, start: i64) {
        self.batches.retain(|_, b| b.last >= start);
        self.start = start;
        self.epochs.truncate_from_start(start);
    }
}

/// Whether two batches differ only in `partitionLeaderEpoch` (bytes 12..16),
/// the one field of Kafka's batch header that neither the CRC nor offset
/// continuity protects: latent rot there is invisible to a single copy.
fn differs_only_in_epoch(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.len() >= 16 && a[..12] == b[..12] && a[16..] == b[16..]
}

#[derive(Clone, Copy, Debug)]
enum Event {
    Op,
    FlushTick,
    Fault(usize),
    EndSafety,
    Restart,
    Final,
}

#[derive(Clone, Copy, Debug)]
struct Weights {
    append: u64,
    sync: u64,
    read: u64,
    lookup: u64,
    advance_start: u64,
    truncate: u64,
    retention: u64,
    new_epoch: u64,
}

impl Weights {
    fn total(&self) -> u64 {
        self.append
            + self.sync
            + self.read
            + self.lookup
            + self.advance_start
            + self.truncate
            + self.retention
            + self.new_epoch
    }
}

struct Run {
    seed: u64,
    trace: Trace,
    now: u64,
    rng: ChaCha8Rng,
    disk: SimDisk,
    swarm: Swarm,
    schedule: Schedule,
    config: LogConfig,
    weights: Weights,
    op_gap_ms: u64,
    partitions: usize,
    logs: Option<Vec<Log<SimDisk>>>,
    models: Vec<Model>,
    queue: TimerQueue<Event>,
    busy_until: u64,
    wall_offset_ms: i64,
    faults_on: bool,
    safety_end: u64,
    final_at: u64,
    restarts: u64,
    violation: Option<String>,
    appended: u64,
    no_buggify: bool,
}

/// Runs the storage workload for one seed.
pub fn run(opts: &RunOptions) -> RunReport {
    let seed = opts.seed;
    let off = |k: FaultKind| opts.overrides.disables(k);
    let mut swarm_rng = rng::stream(seed, Stream::Swarm);
    let swarm = crate::draw_swarm(opts, &mut swarm_rng);
    let flush = match swarm_rng.below(3) {
        0 => FlushPolicy::EveryBatch,
        1 => FlushPolicy::IntervalMs(swarm_rng.between(1, 50)),
        _ => FlushPolicy::Never,
    };
    let config = LogConfig {
        segment_bytes: swarm_rng.between(200, 8192),
        segment_ms: swarm_rng.between(500, 60_000) as i64,
        retention_bytes: if swarm_rng.chance(0.5) {
            -1
        } else {
            swarm_rng.between(2_000, 40_000) as i64
        },
        retention_ms: if swarm_rng.chance(0.5) {
            -1
        } else {
            swarm_rng.between(1_000, 30_000) as i64
        },
        index_interval_bytes: swarm_rng.between(32, 4096),
        max_message_bytes: 1 << 16,
        flush,
        checkpoint_every_flushes: swarm_rng.between(1, 32) as u32,
    };
    let weights = Weights {
        append: swarm_rng.between(20, 60),
        sync: swarm_rng.between(1, 15),
        read: swarm_rng.between(5, 30),
        lookup: swarm_rng.between(0, 5),
        advance_start: swarm_rng.between(0, 2),
        truncate: swarm_rng.between(0, 6),
        retention: swarm_rng.between(0, 5),
        new_epoch: swarm_rng.between(0, 2),
    };
    let drawn_safety_ms = swarm_rng.between(5_000, 20_000);
    let safety_ms = opts
        .overrides
        .safety_ms
        .map_or(drawn_safety_ms, |ms| ms.min(drawn_safety_ms));
    let liveness_ms = 5_000;
    let mut schedule_rng = rng::stream(seed, Stream::Schedule);
    let schedule = Schedule::generate(&mut schedule_rng, &swarm, &[NODE], safety_ms);
    let partitions = swarm_rng.between(1, 3) as usize;
    let disk = SimDisk::new(rng::stream(seed, Stream::Disk), swarm.disk);

    let mut run = Run {
        seed,
        trace: Trace::new(opts.trace),
        now: 0,
        rng: rng::stream(seed, Stream::Workload),
        disk,
        swarm,
        schedule,
        config,
        weights,
        op_gap_ms: swarm_rng.between(1, 20),
        partitions,
        logs: None,
        models: (0..partitions).map(|_| Model::default()).collect(),
        queue: TimerQueue::new(),
        busy_until: 0,
        wall_offset_ms: 0,
        faults_on: true,
        safety_end: safety_ms * MS,
        final_at: (safety_ms + liveness_ms) * MS,
        restarts: 0,
        violation: None,
        appended: 0,
        no_buggify: off(FaultKind::Buggify),
    };
    run.main();
    let simulated_ms = run.now / MS;
    let violation = run.violation.clone();
    RunReport {
        seed,
        workload: Workload::Storage,
        ok: violation.is_none(),
        trace_hash: run.trace.hash(),
        events: run.trace.events(),
        simulated_ms,
        violation,
        trace: run.trace.into_lines(),
    }
}

macro_rules! trace {
    ($run:expr, $($arg:tt)*) => {
        $run.trace.record($run.now, format_args!($($arg)*))
    };
}

impl Run {
    fn schedule_at(&mut self, at: u64, ev: Event) {
        self.queue.schedule(Instant(at), ev);
    }

    fn wall_ms(&self) -> i64 {
        EPOCH_WALL_MS + (self.now / MS) as i64 + self.wall_offset_ms
    }

    fn fail(&mut self, kind: &str, detail: String) {
        if self.violation.is_none() {
            let v = format!("{kind}: {detail}");
            for d in self.disk.damage() {
                trace!(
                    self,
                    "disk damage: {} at {}.{:06}ms in {}",
                    d.kind,
                    d.at_ns / MS,
                    d.at_ns % MS,
                    d.path
                );
            }
            trace!(self, "VIOLATION {v}");
            self.violation = Some(v);
        }
    }

    fn main(&mut self) {
        trace!(
            self,
            "seed {} partitions={} config={:?} swarm[{}] weights={:?} op_gap_ms={} buggify={}",
            self.seed,
            self.partitions,
            self.config,
            self.swarm,
            self.weights,
            self.op_gap_ms,
            !self.no_buggify
        );
        for i in 0..self.schedule.faults.len() {
            let at = self.schedule.faults[i].0 * MS;
            self.schedule_at(at, Event::Fault(i));
        }
        self.schedule_at(self.safety_end, Event::EndSafety);
        self.schedule_at(self.final_at, Event::Final);
        self.schedule_at(0, Event::Restart);
        self.schedule_at(MS, Event::Op);
        if let FlushPolicy::IntervalMs(ms) = self.config.flush {
            self.schedule_at(ms * MS, Event::FlushTick);
        }
        while let Some((Instant(at), ev)) = self.queue.pop_next() {
            if self.violation.is_some() {
                break;
            }
            // The node works on one thing at a time: its own operations
            // wait for the disk; faults do not.
            let node_work = matches!(ev, Event::Op | Event::FlushTick);
            if node_work && at < self.busy_until {
                self.schedule_at(self.busy_until, ev);
                continue;
            }
            self.now = at;
            self.disk.set_now(at);
            match ev {
                Event::Op => {
                    self.op();
                    if self.now < self.final_at {
                        let gap = self.rng.between(1, 2 * self.op_gap_ms) * MS / 2;
                        self.schedule_at(self.now + gap.max(MS / 10), Event::Op);
                    }
                }
                Event::FlushTick => {
                    self.flush_tick();
                    if let FlushPolicy::IntervalMs(ms) = self.config.flush {
                        if self.now < self.final_at {
                            self.schedule_at(self.now + ms * MS, Event::FlushTick);
                        }
                    }
                }
                Event::Fault(i) => {
                    if self.faults_on {
                        let fault = self.schedule.faults[i].1.clone();
                        self.apply_fault(fault);
                    }
                }
                Event::EndSafety => self.end_safety(),
                Event::Restart => self.restart(),
                Event::Final => {
                    self.final_check();
                    break;
                }
            }
            let busy = self.disk.take_busy_ns();
            if node_work || matches!(ev, Event::Restart) {
                self.busy_until = self.now + busy;
            }
        }
    }

    // ---- faults ------------------------------------------------------------

    fn apply_fault(&mut self, fault: Fault) {
        trace!(self, "nemesis {fault}");
        match fault {
            Fault::Crash { .. } => {
                self.logs = None;
                self.disk.crash();
                trace!(self, "disk after crash: {:?}", self.disk.stats());
            }
            Fault::Kill { .. } => {
                self.logs = None;
                self.disk.kill_process();
            }
            Fault::Restart { .. } => {
                if self.logs.is_none() {
                    self.restart();
                }
            }
            Fault::ClockJump { delta_ms, .. } => self.wall_offset_ms += delta_ms,
            other => trace!(self, "fault {other} does not apply to a single node"),
        }
    }

    fn end_safety(&mut self) {
        self.faults_on = false;
        let quiet = self.disk.faults().quiet();
        self.disk.set_faults(quiet);
        trace!(self, "safety phase over: faults off, liveness phase begins");
        if self.logs.is_none() {
            self.restart();
        }
    }

    /// Brings the node back after an operation took a log offline, as an
    /// operator's restart would: the process dies, the machine lives.
    fn restart_after_offline(&mut self, why: &str) {
        if !self.faults_on {
            self.fail(
                "liveness",
                format!("log went offline with faults off: {why}"),
            );
            return;
        }
        trace!(self, "log offline ({why}); restarting the process");
        self.logs = None;
        self.disk.kill_process();
        self.schedule_at(self.now + 10 * MS, Event::Restart);
    }

    fn excused_from(&self, partition: usize) -> Option<i64> {
        let prefix = format!("p{partition}/");
        self.disk
            .damage()
            .iter()
            .filter_map(|d| d.path.strip_prefix(&prefix).and_then(parse_data_name))
            .min()
    }

    /// The log start offset lives only in the two checkpoint copies; with
    /// both damaged, no single node can know it.
    fn both_checkpoint_copies_damaged(&self, partition: usize) -> bool {
        let damage = self.disk.damage();
        ["a", "b"].iter().all(|copy| {
            let name = format!("p{partition}/partition.checkpoint.{copy}");
            damage
                .iter()
                .any(|d| d.path == name || d.path == format!("{name}.tmp"))
        })
    }

    fn restart(&mut self) {
        if self.logs.is_some() {
            return;
        }
        self.restarts += 1;
        let mut logs = Vec::new();
        for p in 0..self.partitions {
            let buggify = if self.no_buggify {
                Buggify::disabled()
            } else {
                Buggify::seeded(self.seed ^ ((p as u64) << 32) ^ (self.restarts << 40))
            };
            match Log::open_with_report(
                self.disk.clone(),
                &format!("p{p}"),
                self.config.clone(),
                buggify,
            ) {
                Ok((log, report)) => {
                    trace!(
                        self,
                        "recovered p{p}: start={} end={} segments={} scanned={} truncated_bytes={} dropped={} rebuilt={} corruption={:?} reason={:?} checkpoint_problem={:?} epochs={:?}",
                        report.log_start_offset,
                        report.log_end_offset,
                        report.segments,
                        report.batches_scanned,
                        report.truncated_bytes,
                        report.segments_dropped,
                        report.indexes_rebuilt,
                        report.corruption,
                        report.truncation_reason,
                        report.checkpoint_problem,
                        log.leader_epochs().entries()
                    );
                    logs.push(log);
                }
                Err(e) => {
                    trace!(self, "recovery of p{p} failed: {e}");
                    if !self.faults_on {
                        self.fail(
                            "liveness",
                            format!("recovery of p{p} failed with faults off: {e}"),
                        );
                        return;
                    }
                    self.disk.kill_process();
                    self.schedule_at(self.now + 10 * MS, Event::Restart);
                    return;
                }
            }
        }
        for (p, log) in logs.iter().enumerate() {
            self.verify_recovered(p, log);
            if self.violation.is_some() {
                return;
            }
        }
        self.logs = Some(logs);
    }

    /// After recovery: the log must hold every durable batch (bar excused
    /// damage), nothing that was never written, and dense offsets; then it
    /// becomes the model, all durable (recovery syncs what it keeps).
    fn verify_recovered(&mut self, p: usize, log: &Log<SimDisk>) {
        let excused = self.excused_from(p);
        let model = &self.models[p];
        let start = log.log_start_offset();
        let end = log.end_offset();
        if start < model.start && !self.both_checkpoint_copies_damaged(p) {
            return self.fail(
                "log-start-regressed",
                format!("p{p}: log start {} went back to {start}", model.start),
            );
        }
        let allowed_start = model.start.max(model.maybe_start.unwrap_or(model.start));
        let lost_by_start = model.batches.values().any(|b| b.durable && b.last < start);
        if start > allowed_start && lost_by_start && excused.is_none_or(|e| e >= start) {
            return self.fail(
                "lost-write",
                format!(
                    "p{p}: log start jumped from {} to {start} over durable batches",
                    model.start
                ),
            );
        }
        if log.durable_end() != end {
            return self.fail(
                "state-mismatch",
                format!(
                    "p{p}: recovery left durable end {} below end {end}",
                    log.durable_end()
                ),
            );
        }
        let mut found: BTreeMap<i64, ModelBatch> = BTreeMap::new();
        let mut offset = start;
        let mut expected_next: Option<i64> = None;
        let mut unverified_from = None;
        while offset < end {
            match log.read(offset, 1 << 16) {
                Ok(r) if r.batches.is_empty() => break,
                Ok(r) => {
                    let mut pos = 0;
                    for h in &r.batches {
                        let bytes = r.bytes[pos..pos + h.total_size()].to_vec();
                        pos += h.total_size();
                        if let Some(n) = expected_next {
                            if h.base_offset != n {
                                return self.fail(
                                    "inconsistent-offsets",
                                    format!("p{p}: after recovery batch at {} follows one ending before {n}", h.base_offset),
                                );
                            }
                        }
                        expected_next = Some(h.next_offset());
                        match model.batches.get(&h.base_offset) {
                            Some(m) if m.bytes == bytes => {}
                            Some(m)
                                if excused.is_some_and(|e| h.base_offset >= e)
                                    && differs_only_in_epoch(&m.bytes, &bytes) =>
                            {
                                trace!(
                                    self,
                                    "p{p}: batch {} came back with a rotted leader epoch (excused)",
                                    h.base_offset
                                );
                            }
                            Some(_) => {
                                return self.fail(
                                    "inconsistent-offsets",
                                    format!(
                                        "p{p}: offset {} reads back different bytes after recovery",
                                        h.base_offset
                                    ),
                                )
                            }
                            None => {
                                return self.fail(
                                    "phantom-read",
                                    format!(
                                        "p{p}: recovered batch at {} was never written",
                                        h.base_offset
                                    ),
                                )
                            }
                        }
                        found.insert(
                            h.base_offset,
                            ModelBatch {
                                bytes,
                                last: h.last_offset(),
                                durable: true,
                            },
                        );
                    }
                    offset = r.batches.last().expect("non-empty").next_offset();
                }
                Err(LogError::Corrupt { offset: o, detail }) => {
                    if excused.is_some_and(|e| o >= e) {
                        trace!(
                            self,
                            "p{p}: corrupt at {o} after disk damage (excused): {detail}"
                        );
                        unverified_from = Some(offset);
                        break;
                    }
                    return self.fail(
                        "spurious-corruption",
                        format!(
                            "p{p}: offset {o} refused as corrupt with no disk damage: {detail}"
                        ),
                    );
                }
                Err(e) => {
                    return self.fail(
                        "state-mismatch",
                        format!("p{p}: reading recovered log at {offset}: {e}"),
                    )
                }
            }
        }
        // Past damage that stopped the read, what the model knows stands in
        // for what could not be read back.
        if let Some(from) = unverified_from {
            for (&base, b) in &model.batches {
                if b.last >= from && b.last < end && !found.contains_key(&base) {
                    found.insert(
                        base,
                        ModelBatch {
                            durable: true,
                            ..b.clone()
                        },
                    );
                }
            }
        }
        let maybe_truncated = model.maybe_truncated_from;
        for (&base, b) in &model.batches {
            let excusable = excused.is_some_and(|e| b.last >= e)
                || maybe_truncated.is_some_and(|t| b.last >= t);
            if b.durable && b.last >= start && !found.contains_key(&base) && !excusable {
                return self.fail(
                    "lost-write",
                    format!("p{p}: batch {base}..={} acknowledged durable, missing after recovery (log now {start}..{end})", b.last),
                );
            }
        }
        let model = &mut self.models[p];
        model.batches = found;
        model.start = start;
        model.end = end;
        model.durable_end = end;
        model.maybe_truncated_from = None;
        model.maybe_start = None;
        model.epochs.truncate_from_start(start);
        model.epochs.truncate_from_end(end);
        if let Some(e) = log.leader_epochs().latest_epoch() {
            model.epoch = model.epoch.max(e);
        }
        if excused.is_none() && log.leader_epochs() != &model.epochs {
            let got = log.leader_epochs().clone();
            let want = model.epochs.clone();
            self.fail(
                "state-mismatch",
                format!("p{p}: leader epochs {got:?} after recovery, expected {want:?}"),
            );
        }
        // Where damage made the history unknowable, adopt the log's.
        if excused.is_some() {
            self.models[p].epochs = log.leader_epochs().clone();
        }
    }

    // ---- operations --------------------------------------------------------

    fn op(&mut self) {
        if self.logs.is_none() {
            return;
        }
        let p = self.rng.below(self.partitions as u64) as usize;
        let w = self.weights;
        let mut roll = self.rng.below(w.total().max(1));
        let mut pick = |weight: u64| {
            if roll < weight {
                true
            } else {
                roll -= weight;
                false
            }
        };
        if pick(w.append) {
            self.append(p);
        } else if pick(w.sync) {
            self.sync(p);
        } else if pick(w.read) {
            self.read(p);
        } else if pick(w.lookup) {
            self.lookup(p);
        } else if pick(w.advance_start) {
            self.advance_start(p);
        } else if pick(w.truncate) {
            self.truncate(p);
        } else if pick(w.retention) {
            self.retention(p);
        } else if w.new_epoch > 0 {
            self.models[p].epoch += 1;
            trace!(self, "p{p}: leader epoch now {}", self.models[p].epoch);
        }
        if self.violation.is_none() {
            self.check_state(p);
        }
    }

    fn log(&mut self, p: usize) -> &mut Log<SimDisk> {
        &mut self.logs.as_mut().expect("node is up")[p]
    }

    fn check_state(&mut self, p: usize) {
        let Some(logs) = &self.logs else { return };
        let log = &logs[p];
        let m = &self.models[p];
        if log.end_offset() != m.end || log.log_start_offset() != m.start {
            let detail = format!(
                "p{p}: log says [{}, {}), model [{}, {})",
                log.log_start_offset(),
                log.end_offset(),
                m.start,
                m.end
            );
            return self.fail("state-mismatch", detail);
        }
        if log.durable_end() < m.durable_end.min(m.end) {
            let detail = format!(
                "p{p}: durable end {} fell below {}",
                log.durable_end(),
                m.durable_end
            );
            self.fail("durable-end-regressed", detail);
        }
    }

    fn make_batch(&mut self, p: usize) -> Vec<u8> {
        let n = self.rng.between(1, 6);
        let ts = self.wall_ms() - self.rng.below(50) as i64;
        let mut b = BatchBuilder::new(ts);
        for i in 0..n {
            let len = self.rng.between(0, 300) as usize;
            let mut value = vec![0u8; len];
            for byte in value.iter_mut() {
                *byte = self.rng.next_u64() as u8;
            }
            let key = format!("p{p}-{}-{i}", self.appended);
            let rts = ts + self.rng.below(20) as i64;
            b = b.add(Some(key.as_bytes()), Some(&value), rts);
        }
        self.appended += 1;
        b.build()
    }

    fn append(&mut self, p: usize) {
        let batch = self.make_batch(p);
        let epoch = self.models[p].epoch;
        let wall = self.wall_ms();
        let result = self.log(p).append_as_leader(&batch, epoch, wall);
        match result {
            Ok(info) => {
                trace!(
                    self,
                    "p{p}: append {}..={} durable={}",
                    info.base_offset,
                    info.last_offset,
                    info.durable
                );
                let end = self.models[p].end;
                if info.base_offset != end {
                    return self.fail(
                        "inconsistent-offsets",
                        format!(
                            "p{p}: append got base offset {}, log end was {end}",
                            info.base_offset
                        ),
                    );
                }
                let m = &mut self.models[p];
                m.record(batch, info.base_offset, epoch);
                m.end = info.last_offset + 1;
                if info.durable {
                    let end = m.end;
                    m.mark_durable_below(end);
                }
            }
            Err(LogError::Offline(why)) => {
                // The write may have happened before the sync failed: the
                // batch may or may not be in the log after recovery, like a
                // produce request that timed out.
                let m = &mut self.models[p];
                let base = m.end;
                m.record(batch, base, epoch);
                self.restart_after_offline(&why)
            }
            Err(LogError::Disk(e)) => {
                trace!(self, "p{p}: append failed: {e}");
                if !self.faults_on {
                    self.fail(
                        "liveness",
                        format!("p{p}: append failed with faults off: {e}"),
                    );
                }
            }
            Err(e) => self.fail("state-mismatch", format!("p{p}: valid append refused: {e}")),
        }
    }

    fn sync(&mut self, p: usize) {
        let result = self.log(p).flush();
        self.after_flush(p, result);
    }

    fn flush_tick(&mut self) {
        if self.logs.is_none() {
            return;
        }
        let now_ms = self.now / MS;
        for p in 0..self.partitions {
            if self.logs.is_none() {
                return;
            }
            let result = self.log(p).maybe_flush(now_ms);
            match result {
                Ok(true) => {
                    let d = self.log(p).durable_end();
                    self.after_flush(p, Ok(d));
                }
                Ok(false) => {}
                Err(e) => self.after_flush(p, Err(e)),
            }
        }
    }

    fn after_flush(&mut self, p: usize, result: Result<i64, LogError>) {
        match result {
            Ok(d) => {
                trace!(self, "p{p}: synced through {d}");
                let m = &mut self.models[p];
                if d != m.end {
                    let end = m.end;
                    return self.fail(
                        "state-mismatch",
                        format!("p{p}: sync reported {d}, log end {end}"),
                    );
                }
                m.mark_durable_below(d);
            }
            Err(LogError::Offline(why)) => self.restart_after_offline(&why),
            Err(e) => self.fail(
                "state-mismatch",
                format!("p{p}: flush failed without going offline: {e}"),
            ),
        }
    }

    fn read(&mut self, p: usize) {
        let (start, end) = (self.models[p].start, self.models[p].end);
        let offset = start + self.rng.below((end - start + 1) as u64) as i64;
        let max = self.rng.between(1, 4096) as usize;
        let excused = self.excused_from(p);
        let result = self.log(p).read(offset, max);
        match result {
            Ok(r) => {
                trace!(
                    self,
                    "p{p}: read {offset} max {max} -> {} batches",
                    r.batches.len()
                );
                if offset < end && r.batches.is_empty() {
                    return self.fail(
                        "poll-skip",
                        format!("p{p}: read at {offset} below end {end} returned nothing"),
                    );
                }
                let mut pos = 0;
                let mut next: Option<i64> = None;
                for (i, h) in r.batches.iter().enumerate() {
                    let bytes = &r.bytes[pos..pos + h.total_size()];
                    pos += h.total_size();
                    if batch::validate(bytes).is_err() {
                        return self.fail(
                            "inconsistent-offsets",
                            format!("p{p}: read at {offset} served an invalid batch"),
                        );
                    }
                    if i == 0 && (h.base_offset > offset || h.last_offset() < offset) {
                        return self.fail(
                            "inconsistent-offsets",
                            format!(
                                "p{p}: read at {offset} began with batch {}..={}",
                                h.base_offset,
                                h.last_offset()
                            ),
                        );
                    }
                    if next.is_some_and(|n| n != h.base_offset) {
                        return self.fail(
                            "inconsistent-offsets",
                            format!("p{p}: read at {offset} skipped to {}", h.base_offset),
                        );
                    }
                    next = Some(h.next_offset());
                    match self.models[p].batches.get(&h.base_offset) {
                        Some(m) if m.bytes == bytes => {}
                        Some(m)
                            if excused.is_some_and(|e| h.base_offset >= e)
                                && differs_only_in_epoch(&m.bytes, bytes) => {}
                        Some(_) => {
                            return self.fail(
                                "inconsistent-offsets",
                                format!(
                                    "p{p}: offset {} read back different bytes than written",
                                    h.base_offset
                                ),
                            )
                        }
                        None => {
                            return self.fail(
                                "phantom-read",
                                format!("p{p}: batch at {} was never written", h.base_offset),
                            )
                        }
                    }
                }
            }
            Err(LogError::Corrupt { offset: o, detail }) => {
                trace!(self, "p{p}: read {offset} refused: corrupt at {o}");
                if excused.is_none_or(|e| o < e) {
                    self.fail(
                        "spurious-corruption",
                        format!(
                            "p{p}: offset {o} refused as corrupt with no disk damage: {detail}"
                        ),
                    );
                }
            }
            Err(LogError::Offline(why)) => self.restart_after_offline(&why),
            Err(e) => self.fail(
                "state-mismatch",
                format!("p{p}: read at {offset} in [{start}, {end}] failed: {e}"),
            ),
        }
    }

    /// Checks ListOffsets-by-time against the model's records.
    fn lookup(&mut self, p: usize) {
        let ts = self.wall_ms() - self.rng.below(20_000) as i64;
        let m = &self.models[p];
        let mut expected = None;
        'outer: for (&base, b) in &m.batches {
            for r in batch::decode_records(&b.bytes).expect("model batches decode") {
                let h = batch::BatchHeader::parse(&b.bytes).expect("valid");
                let (o, t) = (
                    base + r.offset_delta as i64,
                    h.base_timestamp + r.timestamp_delta,
                );
                if o >= m.start && t >= ts {
                    expected = Some((o, t));
                    break 'outer;
                }
            }
        }
        let excused_from = self.excused_from(p);
        let excused = excused_from.is_some();
        let result = self.log(p).offset_for_timestamp(ts);
        match result {
            Ok(got) => {
                trace!(self, "p{p}: offset for time {ts} -> {got:?}");
                // Batches the disk destroyed cannot be searched.
                let damaged = |answer: Option<(i64, i64)>| {
                    excused_from.is_some_and(|e| answer.is_none_or(|(o, _)| o >= e))
                };
                if got != expected && !(damaged(expected) || damaged(got)) {
                    self.fail(
                        "state-mismatch",
                        format!(
                            "p{p}: offset for timestamp {ts} is {got:?}, records say {expected:?}"
                        ),
                    );
                }
            }
            Err(LogError::Corrupt { .. }) if excused => {}
            Err(LogError::Offline(why)) => self.restart_after_offline(&why),
            Err(e) => self.fail(
                "state-mismatch",
                format!("p{p}: offset for timestamp {ts} failed: {e}"),
            ),
        }
    }

    fn advance_start(&mut self, p: usize) {
        let (start, end) = (self.models[p].start, self.models[p].end);
        let to = start + self.rng.below((end - start + 1) as u64) as i64;
        let result = self.log(p).advance_log_start(to);
        match result {
            Ok(s) => {
                trace!(self, "p{p}: delete records below {to} -> start {s}");
                if s != to {
                    return self.fail(
                        "state-mismatch",
                        format!("p{p}: delete records to {to} left start at {s}"),
                    );
                }
                self.models[p].drop_below(s);
            }
            Err(LogError::Offline(why)) => {
                let m = &mut self.models[p];
                m.maybe_start = Some(m.maybe_start.unwrap_or(to).max(to));
                self.restart_after_offline(&why)
            }
            Err(e) => self.fail(
                "state-mismatch",
                format!("p{p}: delete records to {to} failed: {e}"),
            ),
        }
    }

    fn truncate(&mut self, p: usize) {
        let (start, end) = (self.models[p].start, self.models[p].end);
        // Mostly near the tail, as a follower's truncation would be.
        let back = self.rng.below(((end - start) as u64).min(20) + 1) as i64;
        let to = end - back;
        let result = self.log(p).truncate_to(to);
        match result {
            Ok(e) if to >= end => {
                trace!(self, "p{p}: truncate to {to} at the end -> {e}");
                if e != end {
                    self.fail(
                        "state-mismatch",
                        format!("p{p}: truncate to the end {to} moved the end to {e}"),
                    );
                }
            }
            Ok(e) => {
                trace!(self, "p{p}: truncate to {to} -> end {e}");
                let m = &mut self.models[p];
                if e > to.max(m.start) {
                    return self.fail(
                        "state-mismatch",
                        format!("p{p}: truncate to {to} left end at {e}"),
                    );
                }
                m.batches.retain(|_, b| b.last < e);
                m.end = e.max(m.start);
                let end = m.end;
                m.epochs.truncate_from_end(end);
                // A truncation is durable when it returns.
                m.mark_durable_below(end);
                m.durable_end = end;
            }
            Err(LogError::Offline(why)) => {
                trace!(self, "p{p}: truncate to {to} failed part-way");
                let m = &mut self.models[p];
                m.maybe_truncated_from = Some(m.maybe_truncated_from.unwrap_or(to).min(to));
                self.restart_after_offline(&why)
            }
            Err(e) => self.fail(
                "state-mismatch",
                format!("p{p}: truncate to {to} failed: {e}"),
            ),
        }
    }

    fn retention(&mut self, p: usize) {
        let wall = self.wall_ms();
        let result = self.log(p).apply_retention(wall);
        match result {
            Ok(n) => {
                let s = self.log(p).log_start_offset();
                trace!(self, "p{p}: retention deleted {n} segments, start {s}");
                if s < self.models[p].start {
                    return self.fail(
                        "log-start-regressed",
                        format!("p{p}: retention moved start back to {s}"),
                    );
                }
                let m = &self.models[p];
                if s > m.start && s > m.durable_end {
                    return self.fail(
                        "state-mismatch",
                        format!("p{p}: retention deleted past the durable end to {s}"),
                    );
                }
                self.models[p].drop_below(s);
            }
            Err(LogError::Offline(why)) => {
                let m = &mut self.models[p];
                let limit = m.durable_end.max(m.start);
                m.maybe_start = Some(m.maybe_start.unwrap_or(limit).max(limit));
                self.restart_after_offline(&why)
            }
            Err(e) => self.fail("state-mismatch", format!("p{p}: retention failed: {e}")),
        }
    }

    /// End of the liveness phase: the node must be up and usable, and a
    /// final power loss must keep everything synced.
    fn final_check(&mut self) {
        if self.logs.is_none() {
            self.restart();
            if self.violation.is_some() {
                return;
            }
        }
        for p in 0..self.partitions {
            let batch = self.make_batch(p);
            let epoch = self.models[p].epoch;
            let wall = self.wall_ms();
            let appended = self.log(p).append_as_leader(&batch, epoch, wall);
            match appended {
                Ok(info) => {
                    let m = &mut self.models[p];
                    m.record(batch, info.base_offset, epoch);
                    m.end = info.last_offset + 1;
                }
                Err(e) => {
                    return self.fail(
                        "liveness",
                        format!("p{p}: append after faults stopped failed: {e}"),
                    )
                }
            }
            let flushed = self.log(p).flush();
            self.after_flush(p, flushed);
        }
        trace!(self, "final power loss");
        self.logs = None;
        self.disk.crash();
        self.restart();
        if self.violation.is_none() && self.logs.is_none() {
            self.fail(
                "liveness",
                "node did not come back after the final crash".into(),
            );
        }
        trace!(
            self,
            "done: restarts={} appended={} disk={:?}",
            self.restarts,
            self.appended,
            self.disk.stats()
        );
    }
}
