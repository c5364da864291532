//! Reads decision records from the kernel's ring buffer, turns them into decision lines,
//! accounts for the repeats the kernel folded into aggregation entries, and hands every line
//! to its sinks (stdout or the journal, the `enforcerd events` hub, metrics).
//!
//! Aggregation accounting: the kernel keeps, per `AggKey`, a monotonic `folded` counter and
//! writes a record only when the key's window has passed. Each record carries the key's
//! `folded` value; the sweep reads the others once a second. The reader remembers per key how
//! many folded decisions it has already reported and reports the difference as one summary
//! line, so every decision the kernel did not drop ends up in exactly one line's `count`.
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use enforcerd_common::{AggKey, AggState, Event};
use tokio::io::unix::AsyncFd;

use super::{
    Catalog, Decision, Shared, agg_key, boot_ns_now, decode, describe, exe_in_record, exe_of,
    journal::Journal, wall_time,
};
use crate::workload::CgroupFs;

/// Where decision lines go besides `enforcerd events` and metrics.
pub enum Sink {
    /// One JSON line each (stdout when not under systemd).
    Lines(Box<dyn Write + Send>),
    Journal(Journal),
}

/// The kernel objects the reader owns.
pub struct Reporting {
    pub ring: RingBuf<MapData>,
    pub aggregates: BpfHashMap<MapData, AggKey, AggState>,
}

/// Records handled between two looks at the catalog and two publications of the counts.
const BATCH: usize = 256;
/// How often idle aggregation entries are summarized and removed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Per-key accounting of folded decisions.
#[derive(Default)]
pub struct Aggregation {
    window_ns: u64,
    keys: HashMap<AggKey, KeyState>,
}

struct KeyState {
    /// The last record's decision: what a summary of the repeats after it repeats.
    last: Decision,
    /// Folded decisions of this key already reported in a summary.
    accounted: u64,
    /// When the last record or summary was seen (boot clock).
    seen_ns: u64,
}

/// What a sweep found: summary lines to report and kernel entries to delete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub summaries: Vec<Decision>,
    pub expired: Vec<AggKey>,
}

impl Aggregation {
    pub fn new(window: Duration) -> Self {
        Aggregation {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            keys: HashMap::new(),
        }
    }

    /// A record arrived: returns the summary of repeats folded since the key's previous record
    /// (if any), then the record's own decision.
    pub fn record(&mut self, e: &Event, d: Decision, now_ts: &str, now_ns: u64) -> Vec<Decision> {
        let mut out = Vec::with_capacity(2);
        let key = agg_key(e);
        match self.keys.get_mut(&key) {
            Some(k) => {
                if e.folded > k.accounted {
                    out.push(summary(&k.last, e.folded - k.accounted, now_ts));
                    k.accounted = e.folded;
                }
                k.last = d.clone();
                k.seen_ns = now_ns;
            }
            None => {
                // A key the reader has not seen (or forgot): repeats folded before this
                // record are reported on its behalf.
                if e.folded > 0 {
                    out.push(summary(&d, e.folded, now_ts));
                }
                self.keys.insert(
                    key,
                    KeyState {
                        last: d.clone(),
                        accounted: e.folded,
                        seen_ns: now_ns,
                    },
                );
            }
        }
        out.push(d);
        out
    }

    /// Looks at the kernel's entries: reports repeats folded into entries whose window has
    /// passed, and picks entries idle for two windows (and at least two sweeps), all of whose
    /// repeats are reported, for deletion. `unknown` describes a key whose record the
    /// reader never saw; pass `None` while records may still be waiting in the ring buffer
    /// (such keys are then left for a later sweep).
    pub fn sweep(
        &mut self,
        entries: impl IntoIterator<Item = (AggKey, AggState)>,
        now_ns: u64,
        now_ts: &str,
        unknown: Option<&dyn Fn(&AggKey) -> Decision>,
    ) -> Sweep {
        let mut out = Sweep::default();
        let idle_after = self
            .window_ns
            .saturating_mul(2)
            .max(2 * SWEEP_EVERY.as_nanos() as u64);
        let mut present = HashSet::new();
        for (key, state) in entries {
            present.insert(key);
            let age = now_ns.saturating_sub(state.window_start);
            if age < self.window_ns {
                continue;
            }
            let k = match (self.keys.contains_key(&key), unknown) {
                (true, _) => self.keys.get_mut(&key).expect("present"),
                (false, Some(describe)) => self.keys.entry(key).or_insert(KeyState {
                    last: describe(&key),
                    accounted: 0,
                    seen_ns: now_ns,
                }),
                (false, None) => continue,
            };
            if state.folded > k.accounted {
                out.summaries
                    .push(summary(&k.last, state.folded - k.accounted, now_ts));
                k.accounted = state.folded;
            } else if age >= idle_after {
                out.expired.push(key);
            }
        }
        for key in &out.expired {
            self.keys.remove(key);
        }
        // Keys the kernel has no entry for (its insert failed, or it was deleted): forget
        // them once idle, so this map stays as bounded as the kernel's.
        self.keys
            .retain(|k, s| present.contains(k) || now_ns.saturating_sub(s.seen_ns) < idle_after);
        out
    }
}

fn summary(base: &Decision, count: u64, now_ts: &str) -> Decision {
    Decision {
        ts: now_ts.into(),
        count,
        summary: true,
        first_ts: (!base.ts.is_empty()).then(|| base.ts.clone()),
        ..base.clone()
    }
}

/// The reader's state besides aggregation.
struct Reader {
    shared: Arc<Shared>,
    sink: Sink,
    cgroupfs: Option<CgroupFs>,
    learned: HashMap<u64, String>,
    counts: HashMap<String, crate::control::DecisionCounts>,
    journal_failing: bool,
}

impl Reader {
    fn cgroup_path(&mut self, catalog: &Catalog, id: u64, profile_id: u32) -> Option<String> {
        if let Some(p) = catalog.cgroups.get(&id).or_else(|| self.learned.get(&id)) {
            return Some(p.clone());
        }
        let under: Vec<&str> = catalog
            .profiles
            .get(&profile_id)
            .map(|p| p.cgroups.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let path = self.cgroupfs.as_ref()?.path_of(id, &under)?;
        self.learned.insert(id, path.clone());
        Some(path)
    }

    fn decision(&mut self, e: &Event, catalog: &Catalog, ts: String) -> Decision {
        let cgroup = self.cgroup_path(catalog, e.cgroup_id, e.profile_id);
        // The kernel's capture is exact even for processes already gone; /proc is the
        // fallback for what it could not capture (an executable path over 256 bytes).
        let exe = exe_in_record(e).or_else(|| exe_of(e.pid));
        describe(e, catalog, cgroup, ts, exe)
    }

    fn emit(&mut self, d: &Decision) -> std::io::Result<()> {
        let line = serde_json::to_string(d).map_err(std::io::Error::other)?;
        match &mut self.sink {
            Sink::Lines(out) => {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Sink::Journal(j) => match j.send(d, &line) {
                // Said once per outage, not once per decision of a flood.
                Err(e) if !self.journal_failing => {
                    self.journal_failing = true;
                    tracing::warn!(
                        "cannot write decisions to the journal ({e}); they stay in `enforcerd events` and metrics"
                    );
                }
                Err(_) => {}
                Ok(()) => self.journal_failing = false,
            },
        }
        let c = self.counts.entry(d.profile.clone()).or_default();
        match d.decision.as_str() {
            "deny" => c.deny += d.count,
            "kill" => c.kill += d.count,
            "audit" => c.audit += d.count,
            _ => {}
        }
        if let Some(m) = &self.shared.metrics {
            m.decision(&d.hook, &d.decision, &d.profile, d.count);
        }
        self.shared.hub.publish(line.into());
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Sink::Lines(out) = &mut self.sink {
            out.flush()?;
        }
        let mut decisions = self
            .shared
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (profile, c) in self.counts.drain() {
            let total = decisions.entry(profile).or_default();
            total.deny += c.deny;
            total.kill += c.kill;
            total.audit += c.audit;
        }
        Ok(())
    }
}

fn now_ts(now_ns: u64) -> String {
    wall_time(
        now_ns,
        now_ns,
        time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
    )
}

/// Reads decision records until the ring buffer or the sink fails.
pub async fn forward(
    reporting: Reporting,
    shared: Arc<Shared>,
    cgroupfs: Option<CgroupFs>,
    sink: Sink,
    window: Duration,
) -> std::io::Result<()> {
    let Reporting {
        ring,
        mut aggregates,
    } = reporting;
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until dropped, and
    // the AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut reader = Reader {
        shared,
        sink,
        cgroupfs,
        learned: HashMap::new(),
        counts: HashMap::new(),
        journal_failing: false,
    };
    let mut aggregation = Aggregation::new(window);
    let mut next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
    // Whether the last read emptied the ring buffer: only then can a key without a record
    // be one whose record will never come.
    let mut ring_empty = true;
    loop {
        let readable = tokio::time::timeout_at(next_sweep, fd.readable_mut()).await;
        if let Ok(guard) = readable {
            let mut guard = guard?;
            let mut drained = false;
            while !drained {
                let catalog = reader.shared.catalog();
                let ring = guard.get_inner_mut();
                drained = true;
                for _ in 0..BATCH {
                    let Some(item) = ring.next() else { break };
                    let event = decode(&item);
                    drop(item);
                    drained = false;
                    let Some(event) = event else { continue };
                    if let Some(c) = reader.shared.reported.get(usize::from(event.hook)) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(m) = &reader.shared.metrics {
                        m.reported(super::hook_name(event.hook));
                    }
                    let now_ns = boot_ns_now();
                    let now_unix = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
                    let ts = wall_time(event.boot_ns, now_ns, now_unix);
                    let d = reader.decision(&event, &catalog, ts);
                    let now = wall_time(now_ns, now_ns, now_unix);
                    for line in aggregation.record(&event, d, &now, now_ns) {
                        reader.emit(&line)?;
                    }
                }
                reader.flush()?;
                // A flood never postpones the sweep by more than a batch.
                if tokio::time::Instant::now() >= next_sweep {
                    break;
                }
            }
            ring_empty = drained;
            if drained {
                guard.clear_ready();
            }
        }
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
            if window.is_zero() {
                continue;
            }
            let catalog = reader.shared.catalog();
            let entries: Vec<(AggKey, AggState)> =
                aggregates.iter().filter_map(Result::ok).collect();
            let now_ns = boot_ns_now();
            let unknown = |key: &AggKey| {
                // The record that opened this key's window never reached the reader (it
                // was written before the daemon started): describe what the key says.
                // SAFETY: Event is plain old data; all-zero is a valid value.
                let mut e: Event = unsafe { std::mem::zeroed() };
                e.cgroup_id = key.cgroup_id;
                e.profile_id = key.profile_id;
                e.hook = key.hook;
                e.decision = key.decision;
                e.access = key.access;
                e.protocol = key.protocol;
                e.family = key.family;
                e.port = key.port;
                e.addr = key.addr;
                e.inode = key.inode;
                e.dev = key.dev;
                e.path_len = -libc::ENOENT;
                e.exe_start = -libc::ENOENT;
                describe(&e, &catalog, None, String::new(), None)
            };
            let unknown: &dyn Fn(&AggKey) -> Decision = &unknown;
            let sweep = aggregation.sweep(
                entries,
                now_ns,
                &now_ts(now_ns),
                ring_empty.then_some(unknown),
            );
            for line in &sweep.summaries {
                reader.emit(line)?;
            }
            reader.flush()?;
            for key in &sweep.expired {
                let _ = aggregates.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcerd_common::{decision, hook};

    fn event(path: &str, folded: u64) -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.hook = hook::FILE;
        e.decision = decision::DENY;
        e.profile_id = 1;
        e.cgroup_id = 9;
        e.inode = path.len() as u64;
        e.path_len = path.len() as i32 + 1;
        e.path[..path.len()].copy_from_slice(path.as_bytes());
        e.folded = folded;
        e.exe_start = -2;
        e
    }

    fn d(e: &Event, ts: &str) -> Decision {
        describe(e, &Catalog::default(), None, ts.into(), None)
    }

    const WINDOW: Duration = Duration::from_secs(1);
    const S: u64 = 1_000_000_000;

    fn counts(lines: &[Decision]) -> u64 {
        lines.iter().map(|l| l.count).sum()
    }

    #[test]
    fn repeats_are_reported_once_by_the_next_record_or_the_sweep() {
        let mut a = Aggregation::new(WINDOW);
        let first = event("/etc/shadow", 0);
        let lines = a.record(&first, d(&first, "t0"), "t0", S);
        assert_eq!(
            (lines.len(), lines[0].count, lines[0].summary),
            (1, 1, false)
        );
        // 41 repeats folded, then the next window's record arrives carrying folded = 41.
        let second = event("/etc/shadow", 41);
        let lines = a.record(&second, d(&second, "t1"), "t1", 2 * S);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (
                lines[0].count,
                lines[0].summary,
                lines[0].first_ts.as_deref()
            ),
            (41, true, Some("t0"))
        );
        assert_eq!((lines[1].count, lines[1].summary), (1, false));
        // 7 more folded after that record; the sweep sees them once the window passed.
        let key = agg_key(&second);
        let state = |folded| AggState {
            window_start: 2 * S,
            folded,
        };
        let none = None;
        let s = a.sweep([(key, state(48))], 2 * S + S / 2, "t2", none);
        assert!(s.summaries.is_empty(), "window not passed yet");
        let s = a.sweep([(key, state(48))], 3 * S + 1, "t3", none);
        assert_eq!(s.summaries.len(), 1);
        assert_eq!(
            (s.summaries[0].count, s.summaries[0].first_ts.as_deref()),
            (7, Some("t1"))
        );
        assert_eq!(s.summaries[0].target, "/etc/shadow");
        // Nothing new: nothing reported twice; once idle long enough, the entry goes.
        let s = a.sweep([(key, state(48))], 3 * S + 2, "t4", none);
        assert_eq!(s, Sweep::default());
        let s = a.sweep([(key, state(48))], 5 * S, "t5", none);
        assert_eq!((s.summaries.len(), s.expired), (0, vec![key]));
        // Total: 2 records + 41 + 7 = 50 decisions, each in exactly one line.
        assert_eq!(1 + 41 + 1 + 7, 50);
    }

    #[test]
    fn every_decision_is_counted_once_over_a_random_interleaving() {
        // A model of the kernel: decisions on three keys at pseudo-random times; a record when
        // the key's window has passed, else a fold. Records and sweeps reach the reader in
        // order. The reader's lines must add up to the number of decisions.
        let mut a = Aggregation::new(WINDOW);
        let paths = ["/a", "/bb", "/ccc"];
        let mut kernel: HashMap<AggKey, AggState> = HashMap::new();
        let mut total = 0u64;
        let mut lines = 0u64;
        let mut now = S;
        let mut x: u64 = 12345;
        for step in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += (x >> 33) % (S / 50);
            let path = paths[(x >> 20) as usize % 3];
            total += 1;
            let probe = event(path, 0);
            let key = agg_key(&probe);
            match kernel.get_mut(&key) {
                Some(s) if now - s.window_start < S => s.folded += 1,
                entry => {
                    let folded = entry.as_ref().map_or(0, |s| s.folded);
                    match entry {
                        Some(s) => s.window_start = now,
                        None => {
                            kernel.insert(
                                key,
                                AggState {
                                    window_start: now,
                                    folded: 0,
                                },
                            );
                        }
                    }
                    let e = event(path, folded);
                    lines += counts(&a.record(&e, d(&e, "t"), "t", now));
                }
            }
            if step % 97 == 0 {
                let s = a.sweep(kernel.clone(), now, "t", None);
                lines += counts(&s.summaries);
                for k in s.expired {
                    kernel.remove(&k);
                }
            }
        }
        // The flood stops; sweeps flush the rest.
        for _ in 0..4 {
            now += S;
            let s = a.sweep(kernel.clone(), now, "t", None);
            lines += counts(&s.summaries);
            for k in s.expired {
                kernel.remove(&k);
            }
        }
        assert_eq!(lines, total);
        assert!(kernel.is_empty(), "idle entries are deleted");
    }

    #[test]
    fn a_key_first_seen_in_the_sweep_is_described_from_the_key() {
        let mut a = Aggregation::new(WINDOW);
        let key = agg_key(&event("/x", 0));
        let entry = [(
            key,
            AggState {
                window_start: S,
                folded: 5,
            },
        )];
        let s = a.sweep(entry, 3 * S, "t", None);
        assert_eq!(s, Sweep::default(), "its record may still be on its way");
        let describe = |k: &AggKey| d(&event("", 0), &format!("unknown cgroup {}", k.cgroup_id));
        let s = a.sweep(entry, 3 * S, "t", Some(&describe));
        assert_eq!(s.summaries.len(), 1);
        assert_eq!(s.summaries[0].count, 5);
        assert_eq!(s.summaries[0].first_ts.as_deref(), Some("unknown cgroup 9"));
    }
}
