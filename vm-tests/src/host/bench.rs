//! `vm-tests bench`: boots each kernel in benchmark mode and turns the guest's `@@BENCH`
//! lines into tables of ratios to case (a), no enforcement.
//!
//! Two clocks. With QEMU's instruction counter (`-icount shift=0,sleep=off`) guest time
//! advances by instructions executed, so the figures repeat between boots to about 0.05% and
//! do not depend on what else the host runs; they count work, not cache misses or lock waits.
//! The wall-clock boots (plain TCG) show the same ratios with the host's noise; they run one
//! at a time after the instruction-counted ones.

use super::report::KernelReport;
use super::{Scratch, build_initramfs, locate_binaries, qemu};
use crate::bench::{BenchResult, CASES, OPS, Op, ProgramCost};
use crate::protocol::Event;
use anyhow::{Context as _, Result, bail};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Debian's AppArmor parser (package `apparmor`), copied into the initramfs for case (e).
pub const APPARMOR_PARSER: &str = "/usr/sbin/apparmor_parser";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Clock {
    /// QEMU's instruction-counting clock: repeatable figures.
    Icount,
    /// Plain TCG with the host's clock: noisy figures, for comparison.
    Wall,
}

impl Clock {
    fn qemu_args(self) -> Vec<String> {
        match self {
            Clock::Icount => vec!["-icount".into(), "shift=0,sleep=off".into()],
            Clock::Wall => vec![],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Clock::Icount => "icount",
            Clock::Wall => "wall",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Clock::Icount => {
                "Instruction-counting clock (QEMU `-icount shift=0,sleep=off`: 1 ns of guest \
                 time per instruction; repeatable to ~0.05%)"
            }
            Clock::Wall => "Wall clock (QEMU TCG, host time: noisy, shown for honesty)",
        }
    }
}

pub struct BenchOptions {
    /// Kernels, binaries, directories, time limit and memory as for `vm-tests test`; `jobs`
    /// is how many instruction-counted boots run at once (wall-clock boots always run alone).
    pub host: super::Options,
    pub clocks: Vec<Clock>,
    /// A twentieth of the runs (see `Op::quick`): a check that every case works, not figures.
    pub quick: bool,
}

/// One boot's figures.
#[derive(Debug, Clone)]
pub struct BootFigures {
    pub kernel: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub clock: Clock,
    pub results: Vec<BenchResult>,
    pub programs: Vec<ProgramCost>,
}

impl BootFigures {
    fn get(&self, case: &str, op: &str) -> Option<&BenchResult> {
        self.results.iter().find(|r| r.case == case && r.op == op)
    }

    /// median(case) / median(a), and the same for p99.
    fn ratio(&self, case: &str, op: &str) -> Option<(f64, f64)> {
        let base = self.get("a", op)?;
        let r = self.get(case, op)?;
        Some((
            r.stats.median_ns as f64 / base.stats.median_ns.max(1) as f64,
            r.stats.p99_ns as f64 / base.stats.p99_ns.max(1) as f64,
        ))
    }

    fn complete(&self) -> bool {
        CASES
            .iter()
            .all(|c| OPS.iter().all(|o| self.get(c.id, o.id).is_some()))
    }
}

/// Runs the benchmark; whether every boot ran every case with its enforcement proven.
pub fn bench(opts: &BenchOptions) -> Result<bool> {
    let started = Instant::now();
    let host = &opts.host;
    let bins = locate_binaries(host.bin_dir.as_deref(), true)?;
    if !Path::new(APPARMOR_PARSER).is_file() {
        bail!("{APPARMOR_PARSER} not found: install Debian's apparmor package (tools/setup does)");
    }
    std::fs::create_dir_all(&host.log_dir)
        .with_context(|| format!("creating {}", host.log_dir.display()))?;
    let scratch = Scratch::new()?;
    let initrd = build_initramfs(
        &bins,
        &scratch,
        vec![(PathBuf::from(APPARMOR_PARSER), "apparmor_parser")],
    )?;
    let kernels = host.kernel_list();

    let mut boots = Vec::new();
    let mut ok = true;
    for clock in &opts.clocks {
        let jobs = if *clock == Clock::Icount {
            host.jobs
        } else {
            1
        };
        let queue = Mutex::new(kernels.iter().cloned().collect::<VecDeque<_>>());
        let done: Mutex<Vec<(BootFigures, KernelReport)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    loop {
                        // Not in a `while let`: its guard would hold the lock for the boot.
                        let next = queue.lock().expect("queue").pop_front();
                        let Some((name, image)) = next else { break };
                        let boot = run_boot(opts, &initrd, name, image, *clock);
                        done.lock().expect("results").push(boot);
                    }
                });
            }
        });
        let mut done = done.into_inner().expect("results");
        done.sort_by_key(|(f, _)| kernels.iter().position(|(k, _)| *k == f.kernel));
        for (figures, report) in done {
            let complete = figures.complete();
            if report.failed() > 0 || !complete || report.guest_exit != Some(0) {
                ok = false;
                print!("{}", super::report::render_kernel(&report));
                if !complete {
                    println!(
                        "[{}-{}] incomplete: {} of {} figures",
                        figures.kernel,
                        clock.name(),
                        figures.results.len(),
                        CASES.len() * OPS.len()
                    );
                }
            }
            boots.push(figures);
        }
    }

    let date = today();
    let mut text = render(&boots, &date);
    if opts.quick {
        text.insert_str(
            0,
            "**Quick run (--quick): a twentieth of the iterations. These figures check that \
             every case works; they are not benchmark results.**\n\n",
        );
    }
    println!("\n{text}");
    let out = host.log_dir.join("bench.md");
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "tables written to {}; total {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

fn run_boot(
    opts: &BenchOptions,
    initrd: &Path,
    name: String,
    image: PathBuf,
    clock: Clock,
) -> (BootFigures, KernelReport) {
    let host = &opts.host;
    let label = format!("{name}-{}", clock.name());
    let spec = qemu::VmSpec {
        name: label.clone(),
        kernel: image,
        initrd: initrd.to_owned(),
        append: if opts.quick {
            vec![
                "enforcerd.mode=bench".to_owned(),
                "enforcerd.quick=1".to_owned(),
            ]
        } else {
            vec!["enforcerd.mode=bench".to_owned()]
        },
        timeout: host.timeout,
        log_path: host.log_dir.join(format!("bench-{label}.log")),
        memory_mb: host.memory_mb,
        qemu_args: clock.qemu_args(),
    };
    println!("[{label}] booting");
    let mut results = Vec::new();
    let mut programs = Vec::new();
    let report = qemu::run(&spec, &["bench"], |_, event, elapsed| match event {
        Some(Event::BenchProgram(p)) => programs.push(p.clone()),
        Some(Event::Bench(b)) => {
            println!(
                "[{label}] ({}) {}: median {} ns, p99 {} ns ({:.0} s)",
                b.case,
                b.op,
                b.stats.median_ns,
                b.stats.p99_ns,
                elapsed.as_secs_f64()
            );
            results.push(b.clone());
        }
        Some(Event::Result(r)) if !r.ok => println!("[{label}] FAIL {}: {}", r.check, r.got),
        _ => {}
    });
    println!(
        "[{label}] finished in {:.1} s",
        report.total_time.as_secs_f64()
    );
    let figures = BootFigures {
        kernel: name,
        release: report.release.clone().unwrap_or_default(),
        clock,
        results,
        programs,
    };
    (figures, report)
}

/// Today's date (UTC), e.g. `2026-11-24`.
fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

fn micros(ns: u64) -> String {
    format!("{:.2} µs", ns as f64 / 1000.0)
}

fn percent(ratio: f64) -> String {
    format!("{:+.2}%", (ratio - 1.0) * 100.0)
}

/// The tables (Markdown) for every clock that has boots.
pub fn render(boots: &[BootFigures], date: &str) -> String {
    let mut s = String::new();
    for clock in [Clock::Icount, Clock::Wall] {
        let boots: Vec<&BootFigures> = boots.iter().filter(|b| b.clock == clock).collect();
        if boots.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {}\n", clock.title());
        let _ = writeln!(
            s,
            "Measured {date}. Case (a) in absolute time (median, p99); other cases as ratios \
             to (a) (median, p99).\n"
        );
        let _ = write!(s, "| operation | case |");
        for b in &boots {
            let _ = write!(s, " {} ({}) |", b.kernel, b.release);
        }
        let _ = write!(s, "\n|---|---|");
        for _ in &boots {
            s.push_str("---|");
        }
        s.push('\n');
        for op in OPS {
            for (i, case) in CASES.iter().enumerate() {
                let first = if i == 0 { op.about } else { "" };
                let _ = write!(s, "| {first} | ({}) {} |", case.id, case.about);
                for b in &boots {
                    let cell = if case.id == "a" {
                        b.get("a", op.id).map(|r| {
                            format!(
                                "{} (p99 {})",
                                micros(r.stats.median_ns),
                                micros(r.stats.p99_ns)
                            )
                        })
                    } else {
                        b.ratio(case.id, op.id)
                            .map(|(m, p)| format!("{m:.3}× (p99 {p:.3}×)"))
                    };
                    let _ = write!(s, " {} |", cell.as_deref().unwrap_or("—"));
                }
                s.push('\n');
            }
        }
        s.push('\n');
        s.push_str(&render_targets(&boots));
        s.push('\n');
        s.push_str(&render_programs(&boots));
    }
    s
}

/// Per-program cost per run, from the profiling pass of the cases with enforcerd.
fn render_programs(boots: &[&BootFigures]) -> String {
    let mut rows: Vec<(&str, &str, &str)> = Vec::new();
    for b in boots {
        for p in &b.programs {
            let row = (p.case.as_str(), p.op.as_str(), p.program.as_str());
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "Time inside each enforcerd program per run (the kernel's BPF run-time accounting, in \
         a second pass of the loop; program names cut to 15 bytes by the kernel):\n\n\
         | case | operation | program |",
    );
    for b in boots {
        let _ = write!(s, " {} |", b.kernel);
    }
    s.push_str("\n|---|---|---|");
    for _ in boots {
        s.push_str("---|");
    }
    s.push('\n');
    for (case, op, program) in rows {
        let _ = write!(s, "| ({case}) | {op} | `{program}` |");
        for b in boots {
            let cell = b
                .programs
                .iter()
                .find(|p| p.case == case && p.op == op && p.program == program)
                .map(|p| format!("{} ns × {}", p.ns_per_run, p.runs));
            let _ = write!(s, " {} |", cell.as_deref().unwrap_or("—"));
        }
        s.push('\n');
    }
    s.push('\n');
    s
}

/// Noise: how far the repeat of (a) at the end of the boot landed from (a), at least 0.1%.
fn noise(b: &BootFigures, op: &str) -> Option<f64> {
    b.ratio("a2", op).map(|(m, _)| (m - 1.0).abs().max(0.001))
}

/// The targets, per kernel and operation, judged on medians.
fn render_targets(boots: &[&BootFigures]) -> String {
    let mut s = String::from(
        "| operation | kernel | noise (a2 vs a) | (b) within noise | (c) within target | \
         (d) within target | (d) within noise of (c) | (c) at or below (e) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for op in OPS {
        for b in boots {
            let _ = writeln!(s, "| {} | {} | {} |", op.id, b.kernel, target_cells(b, op));
        }
    }
    s
}

fn target_cells(b: &BootFigures, op: &Op) -> String {
    let (Some(noise), Some((rb, _)), Some((rc, _)), Some((rd, _)), Some((re, _))) = (
        noise(b, op.id),
        b.ratio("b", op.id),
        b.ratio("c", op.id),
        b.ratio("d", op.id),
        b.ratio("e", op.id),
    ) else {
        return "incomplete | | | | | |".to_owned();
    };
    let mark = |ok: bool| if ok { "yes" } else { "**no**" };
    let target = op.target;
    [
        format!("±{:.2}%", noise * 100.0),
        format!("{} {}", percent(rb), mark((rb - 1.0).abs() <= noise)),
        format!(
            "{} (≤ +{:.0}%) {}",
            percent(rc),
            (target - 1.0) * 100.0,
            mark(rc <= target)
        ),
        format!(
            "{} (≤ +{:.0}%) {}",
            percent(rd),
            (target - 1.0) * 100.0,
            mark(rd <= target)
        ),
        format!(
            "{} {}",
            percent(rd / rc),
            mark((rd / rc - 1.0).abs() <= noise)
        ),
        format!("{} vs {} {}", percent(rc), percent(re), mark(rc <= re)),
    ]
    .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Stats;

    fn figures(median: &[(&str, &str, u64)]) -> BootFigures {
        BootFigures {
            kernel: "debian12".into(),
            release: "6.1.0-56-amd64".into(),
            clock: Clock::Icount,
            results: median
                .iter()
                .map(|(case, op, m)| BenchResult {
                    case: (*case).into(),
                    op: (*op).into(),
                    stats: Stats {
                        iterations: 1000,
                        median_ns: *m,
                        p99_ns: m * 2,
                        mean_ns: *m,
                    },
                })
                .collect(),
            programs: vec![ProgramCost {
                case: "c".into(),
                op: "open".into(),
                program: "file_open".into(),
                runs: 22_010,
                ns_per_run: 812,
            }],
        }
    }

    #[test]
    fn ratios_are_to_case_a_and_targets_are_judged() {
        let mut rows = Vec::new();
        for op in OPS {
            for (case, m) in [
                ("a", 10_000),
                ("b", 10_005),
                ("c", 10_400),
                ("d", 10_410),
                ("e", 10_600),
                ("a2", 10_010),
            ] {
                rows.push((case, op.id, if op.id == "exec" { m * 100 } else { m }));
            }
        }
        let b = figures(&rows);
        assert!(b.complete());
        assert_eq!(b.ratio("c", "open"), Some((1.04, 1.04)));
        let text = render(&[b], "2026-11-24");
        assert!(
            text.contains(
                "| open()+close() of an allowed file | (a) no enforcerd | 10.00 µs (p99 20.00 µs) |"
            ),
            "{text}"
        );
        assert!(text.contains("1.040× (p99 1.040×)"), "{text}");
        // open: +4% is within 5%; exec: +4% misses 3%.
        assert!(
            text.contains("| open | debian12 | ±0.10% | +0.05% yes | +4.00% (≤ +5%) yes |"),
            "{text}"
        );
        assert!(
            text.contains("| exec | debian12 | ±0.10% | +0.05% yes | +4.00% (≤ +3%) **no** |"),
            "{text}"
        );
        assert!(text.contains("+4.00% vs +6.00% yes"), "{text}");
        assert!(
            text.contains("| (c) | open | `file_open` | 812 ns × 22010 |"),
            "{text}"
        );
        assert!(!text.contains("Wall clock"));
    }

    #[test]
    fn missing_figures_show_as_gaps() {
        let b = figures(&[("a", "open", 100)]);
        assert!(!b.complete());
        let text = render(&[b], "2026-11-24");
        assert!(text.contains("| (b) enforcerd, profiles for 100 other cgroups only | — |"));
        assert!(text.contains("| open | debian12 | incomplete |"));
    }
}
