//! The benchmark both sides agree on (`vm-tests bench`): which cases run, which operations are
//! timed, and how samples become the figures reported.
//!
//! Every case runs the same three timed loops in a fresh worker process (`vm-guest
//! bench-worker`) placed in the same cgroup, so the cases differ only in what enforces on it.

use serde::{Deserialize, Serialize};

/// One configuration of the enforcement around the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub id: &'static str,
    pub about: &'static str,
}

/// In run order. `a2` repeats `a` at the end of the boot: how far it lands from `a` is the
/// run's noise (and drift), the yardstick for "within noise".
pub const CASES: &[Case] = &[
    Case {
        id: "a",
        about: "no enforcerd",
    },
    Case {
        id: "b",
        about: "enforcerd, profiles for 100 other cgroups only",
    },
    Case {
        id: "c",
        about: "own cgroup governed by a realistic profile",
    },
    Case {
        id: "d",
        about: "(c) + 10,000 file rules, 1,000 exec rules, 1,000 CIDRs",
    },
    Case {
        id: "e",
        about: "AppArmor profile on the worker, no enforcerd",
    },
    Case {
        id: "a2",
        about: "no enforcerd, again (noise)",
    },
];

/// A timed operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Op {
    pub id: &'static str,
    pub about: &'static str,
    /// Timed iterations, after `warmup` untimed ones.
    pub iterations: usize,
    pub warmup: usize,
    /// The most a governed case may add, as a ratio to case `a` (the targets).
    pub target: f64,
}

pub const OPS: &[Op] = &[
    Op {
        id: "open",
        about: "open()+close() of an allowed file",
        iterations: 20_000,
        warmup: 2_000,
        target: 1.05,
    },
    Op {
        id: "exec",
        about: "fork+exec+wait of an allowed, dynamically linked binary",
        iterations: 500,
        warmup: 20,
        target: 1.03,
    },
    Op {
        id: "connect",
        about: "TCP connect() to a loopback listener",
        iterations: 5_000,
        warmup: 500,
        target: 1.05,
    },
];

impl Op {
    /// The same operation with a twentieth of the runs: `vm-tests bench --quick`, which the
    /// test suite runs to prove every case is set up and enforcing. Its figures are not
    /// benchmark results.
    pub fn quick(&self) -> Op {
        Op {
            iterations: (self.iterations / 20).max(1),
            warmup: (self.warmup / 20).max(1),
            ..*self
        }
    }
}

pub fn op(id: &str) -> Option<&'static Op> {
    OPS.iter().find(|o| o.id == id)
}

/// What one worker measured for one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub iterations: u64,
    pub median_ns: u64,
    pub p99_ns: u64,
    pub mean_ns: u64,
}

impl Stats {
    /// Median (the upper one for an even count), 99th percentile (nearest rank) and mean.
    /// `None` for no samples.
    pub fn from_samples(mut samples: Vec<u64>) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = (n * 99).div_ceil(100).max(1);
        Some(Stats {
            iterations: n as u64,
            median_ns: samples[n / 2],
            p99_ns: samples[rank - 1],
            mean_ns: samples.iter().sum::<u64>() / n as u64,
        })
    }
}

/// One `@@BENCH` line: a case's figures for one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchResult {
    pub case: String,
    pub op: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// One `@@BENCH-PROG` line: what one BPF program cost per run while a case's loop ran (from
/// the kernel's `bpf_stats_enabled` accounting, in a second pass so the accounting does not
/// weigh on the timed figures). Under the instruction-counting clock, nanoseconds are
/// instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub case: String,
    pub op: String,
    pub program: String,
    pub runs: u64,
    pub ns_per_run: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = Stats::from_samples((1..=100).rev().collect()).unwrap();
        assert_eq!(
            s,
            Stats {
                iterations: 100,
                median_ns: 51,
                p99_ns: 99,
                mean_ns: 50,
            }
        );
        let one = Stats::from_samples(vec![7]).unwrap();
        assert_eq!((one.median_ns, one.p99_ns, one.mean_ns), (7, 7, 7));
        let s = Stats::from_samples((1..=1000).collect()).unwrap();
        assert_eq!((s.median_ns, s.p99_ns), (501, 990));
        assert_eq!(Stats::from_samples(vec![]), None);
    }

    #[test]
    fn cases_and_ops_are_unique() {
        for (i, c) in CASES.iter().enumerate() {
            assert!(CASES[i + 1..].iter().all(|d| d.id != c.id), "{}", c.id);
        }
        for o in OPS {
            assert_eq!(op(o.id), Some(o));
            assert!(o.iterations >= 500 && o.target > 1.0);
            let q = o.quick();
            assert!(q.iterations >= 25 && q.iterations * 20 == o.iterations && q.warmup >= 1);
        }
    }
}
