//! A governed process opens denied files 200,000 times as fast as it can: every open is
//! denied, the kernel path never waits for reporting, and every denial is accounted for
//! exactly — reported as a record, folded into an aggregation summary, or counted as a
//! dropped record — while the daemon's memory stays bounded.

use std::time::{Duration, Instant};

use crate::guest::daemon::status_json;
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL};
use crate::guest::out::Ctx;
use crate::guest::sys::{
    Cgroup, WaitStatus, cstring, monotonic_ns, spawn_in, try_open, write_line,
};
use anyhow::Result;
use serde_json::Value;

const OPENS: u64 = 200_000;
/// Distinct denied files the burst cycles through: more than the ring buffer holds records
/// (1 MiB), so the first round can overflow it, and each later round is folded.
const FILES: u64 = 2_000;
const DIR: &str = "/srv/burst";
/// Outside the denied subtree: the benchmark's allowed file.
const ALLOWED: &str = "/srv/burst-allowed.txt";
const ROUNDS: usize = 5;
const ROUND_OPENS: u64 = 20_000;

pub fn a_flood_of_denials_is_counted_exactly_with_bounded_memory(ctx: &mut Ctx) -> Result<()> {
    std::fs::create_dir_all(DIR)?;
    for i in 0..FILES {
        fixtures::write(&format!("{DIR}/f{i}"), "x\n", 0o644)?;
    }
    let cg = Cgroup::create("/denial_burst")?;
    let dir = fixtures::profile_dir("denial_burst")?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:\n    default: allow\n    rules:\n      - {{path: {DIR}/, access: [read], action: deny}}\n{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "burst.yaml",
        &fixtures::profile("burst", &cg.rel, "enforce", "deny", &body),
    )?;
    let allowed = cstring(ALLOWED);
    fixtures::write(ALLOWED, "x\n", 0o644)?;
    let baseline = open_ns(&cg, &allowed);
    ctx.start_daemon(&dir, "daemon_ready")?;
    // Tens of thousands of decision lines: keep them out of the serial console.
    if let Some(d) = ctx.daemon.as_mut() {
        d.relay_stdout = false;
    }
    let pid = ctx.daemon_pid().unwrap_or(0);
    let governed = open_ns(&cg, &allowed);
    ctx.note(&format!(
        "benchmark (not a check): open()+close() of an allowed file, median of {ROUNDS} rounds of \
         {ROUND_OPENS}: {baseline} ns without enforcerd, {governed} ns governed with reporting on; \
         ratio {:.3}",
        governed as f64 / baseline.max(1) as f64
    ));
    let rss_before = fixtures::vm_kib(pid, "VmRSS:");

    let paths: Vec<_> = (0..FILES).map(|i| cstring(format!("{DIR}/f{i}"))).collect();
    let started = Instant::now();
    let child = spawn_in(Some(&cg), move |fd| {
        let (mut eperm, mut other) = (0u64, 0u64);
        for i in 0..OPENS {
            match try_open(&paths[(i % FILES) as usize]) {
                Err(libc::EPERM) => eperm += 1,
                _ => other += 1,
            }
        }
        write_line(fd, &format!("{eperm} {other}"));
        0
    })?;
    let (lines, status) = child.finish(Duration::from_secs(600));
    let took = started.elapsed();
    let counts: Vec<u64> = lines
        .first()
        .map(|l| l.split(' ').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    ctx.check(
        "every_open_denied",
        status == WaitStatus::Exited(0) && counts == [OPENS, 0],
        format!("{OPENS} opens failed with EPERM, 0 otherwise"),
        format!("{lines:?}, {status:?}"),
        None,
    );
    ctx.note(&format!(
        "{OPENS} denied opens in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        OPENS as f64 / took.as_secs_f64()
    ));

    // The kernel's counters, once the reader has caught up with the ring buffer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        let file = status_json().ok().and_then(|s| file_counters(&s));
        let caught_up = file
            .as_ref()
            .is_some_and(|c| c.reported + c.aggregated + c.dropped >= c.denied);
        if caught_up || Instant::now() >= deadline {
            break file.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    ctx.check(
        "kernel_counted_every_denial",
        file.denied == OPENS,
        format!("denied = {OPENS}"),
        format!("{file:?}"),
        None,
    );
    ctx.check(
        "reported_plus_aggregated_plus_dropped_is_exact",
        file.reported + file.aggregated + file.dropped == OPENS,
        format!("reported + aggregated + dropped = {OPENS}"),
        format!(
            "{} + {} + {} = {}",
            file.reported,
            file.aggregated,
            file.dropped,
            file.reported + file.aggregated + file.dropped
        ),
        None,
    );

    // The decision lines (records and summaries) add up to every denial not dropped, once the
    // aggregation windows have closed and been swept.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (lines, summaries, total) = loop {
        let decisions = ctx.daemon_decisions();
        let total: u64 = decisions
            .iter()
            .filter(|d| d["profile"] == "burst")
            .map(|d| d["count"].as_u64().unwrap_or(0))
            .sum();
        if total + file.dropped >= OPENS || Instant::now() >= deadline {
            let summaries = decisions
                .iter()
                .filter(|d| d["summary"] == Value::Bool(true))
                .count();
            break (decisions.len(), summaries, total);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ctx.check(
        "decision_lines_account_for_every_denial",
        total + file.dropped == OPENS,
        format!("sum of count over decision lines + dropped = {OPENS}"),
        format!(
            "{total} in {lines} lines ({summaries} summaries) + {} dropped",
            file.dropped
        ),
        None,
    );

    let hwm = fixtures::vm_kib(pid, "VmHWM:");
    ctx.note(&format!(
        "daemon RSS before the burst {rss_before} KiB, peak {hwm} KiB"
    ));
    ctx.check(
        "daemon_memory_bounded",
        hwm > 0 && hwm < 100 * 1024,
        "peak RSS below 100 MiB",
        format!("{hwm} KiB (before the burst: {rss_before} KiB)"),
        None,
    );
    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

/// Median over `ROUNDS` of the mean time of one open()+close() of `path`, in ns, measured in
/// a child in `cg` (governed or not, depending on whether the daemon runs).
fn open_ns(cg: &Cgroup, path: &std::ffi::CString) -> u64 {
    let mut rounds: Vec<u64> = (0..ROUNDS)
        .filter_map(|_| {
            let path = path.clone();
            let child = spawn_in(Some(cg), move |fd| {
                let t0 = monotonic_ns();
                for _ in 0..ROUND_OPENS {
                    let _ = try_open(&path);
                }
                write_line(fd, &((monotonic_ns() - t0) / ROUND_OPENS).to_string());
                0
            })
            .ok()?;
            let (lines, _) = child.finish(Duration::from_secs(120));
            lines.first()?.parse().ok()
        })
        .collect();
    rounds.sort_unstable();
    rounds.get(rounds.len() / 2).copied().unwrap_or(0)
}

#[derive(Debug, Default)]
struct Counters {
    denied: u64,
    reported: u64,
    aggregated: u64,
    dropped: u64,
}

fn file_counters(status: &Value) -> Option<Counters> {
    let h = status["hooks"]
        .as_array()?
        .iter()
        .find(|h| h["hook"] == "file")?;
    let n = |k: &str| h[k].as_u64().unwrap_or(0);
    Some(Counters {
        denied: n("denied"),
        reported: n("reported"),
        aggregated: n("aggregated"),
        dropped: n("dropped"),
    })
}
