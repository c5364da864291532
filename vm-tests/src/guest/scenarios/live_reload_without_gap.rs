//! live_reload_without_gap: a governed workload opens a file every version denies and a file
//! every version allows, in a tight loop, while its profile is replaced 50 times (25 times
//! through SIGHUP, 25 times through the profiles directory). Not one denied open may succeed
//! and not one allowed open may fail. Each version also denies its own marker file, so the
//! runner measures how long each replacement takes to be in force, and a poller checks that
//! no instant shows half the old and half the new rules. Then: a tampered replacement and a
//! rolled-back serial (the genuine, validly signed first version replayed) are refused with the
//! previous version kept, the rollback is still refused after a daemon restart, and a deleted
//! profile stops being enforced.
//!
//! The profile file and its signature are always written under hidden temporary names and
//! renamed into place, the signature first, so every state the daemon can read is the old
//! version, a refused mix (the previous version is kept) or the new version. In the SIGHUP
//! phase the directory holds symlinks to a store outside it: the store changes without any
//! event in the watched directory, so only SIGHUP can make a version take effect.

use crate::guest::daemon::{run_command, status_json};
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL, json_str, sig_path};
use crate::guest::out::Ctx;
use crate::guest::sys::{
    Cgroup, Outcome, Spawned, WaitStatus, cstring, errno_name, monotonic_ns, open_op, spawn_in,
    try_open, write_line,
};
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NAME: &str = "live-reload";
const CGROUP: &str = "/live_reload";
const AUX_NAME: &str = "live-reload-aux";
const AUX_CGROUP: &str = "/live_reload_aux";
const FILE: &str = "reload.yaml";
const AUX_FILE: &str = "aux.yaml";

/// Denied by every version (the subtree rule).
const DENIED: &str = "/srv/reload/guarded/denied";
/// Allowed by every version (a longer allow rule inside the denied subtree).
const ALLOWED: &str = "/srv/reload/guarded/allowed";

/// Replacements: versions 1..=SIGHUP_VERSIONS through SIGHUP, the rest through the directory.
const VERSIONS: u64 = 50;
const SIGHUP_VERSIONS: u64 = 25;
/// Version VERSIONS + 1, tampered after signing.
const TAMPERED: u64 = VERSIONS + 1;

const STORE: &str = "/tmp/reload-store";
const STAGING: &str = "/tmp/reload-staging";

/// How long one version may take to be in force.
const LATENCY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// The workload stops by itself after this long, whatever the runner does.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(120);
/// After this many versions in a row not in force, the remaining ones are not attempted.
const GIVE_UP_AFTER: usize = 3;
/// Fewer iterations than this would not prove much about the instants of 50 swaps.
const MIN_ITERATIONS: u64 = 1000;

fn marker(version: u64) -> String {
    format!("/srv/reload/v{version}")
}

fn serial(version: u64) -> u64 {
    version + 1
}

/// Version `version` of the profile: denies the guarded subtree except [`ALLOWED`], and
/// `marker`. The trailing comment gives the tampering a byte to flip.
fn document(version: &str, serial: u64, marker: &str) -> String {
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: /srv/reload/guarded/, access: [read, write], action: deny}}
      - {{path: {ALLOWED}, access: [read], action: allow}}
      - {{path: {marker}, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    let mut doc = fixtures::profile_with_serial(NAME, serial, CGROUP, "enforce", "deny", &body);
    doc.push_str(&format!("# revision {version}\n"));
    doc
}

fn aux_document() -> String {
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: /srv/reload/guarded/, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    fixtures::profile(AUX_NAME, AUX_CGROUP, "enforce", "deny", &body)
}

fn staged(version: &str, file: &str) -> PathBuf {
    Path::new(STAGING).join(version).join(file)
}

/// A signed profile copied to hidden names in a directory, its signature already renamed into
/// place; [`Replacement::commit`] renames the profile.
struct Replacement {
    tmp: PathBuf,
    target: PathBuf,
}

fn prepare(dir: &Path, source: &Path) -> Result<Replacement> {
    let file = source
        .file_name()
        .and_then(|f| f.to_str())
        .context("file name")?;
    let target = dir.join(file);
    let tmp = dir.join(format!(".{file}.next"));
    let tmp_sig = dir.join(format!(".{file}.sig.next"));
    std::fs::copy(source, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    std::fs::copy(sig_path(source), &tmp_sig)
        .with_context(|| format!("copying to {}", tmp_sig.display()))?;
    std::fs::rename(&tmp_sig, sig_path(&target))
        .with_context(|| format!("renaming {}", tmp_sig.display()))?;
    Ok(Replacement { tmp, target })
}

impl Replacement {
    fn commit(self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target)
            .with_context(|| format!("renaming {}", self.tmp.display()))
    }
}

// ---- the workload ----

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// What the workload counted.
#[derive(Debug, Default)]
struct Counts {
    iterations: u64,
    denied_succeeded: u64,
    denied_other_errno: u64,
    allowed_failed: u64,
    last_errno: i32,
    /// `CLOCK_MONOTONIC` of the first wrong outcome (0: none).
    first_wrong_ns: u64,
    elapsed_ms: u64,
    stopped_by: String,
}

impl Counts {
    fn to_line(&self) -> String {
        format!(
            "counts iterations={} denied_succeeded={} denied_other_errno={} allowed_failed={} \
             last_errno={} first_wrong_ns={} elapsed_ms={} stopped_by={}",
            self.iterations,
            self.denied_succeeded,
            self.denied_other_errno,
            self.allowed_failed,
            self.last_errno,
            self.first_wrong_ns,
            self.elapsed_ms,
            self.stopped_by
        )
    }

    fn parse(line: &str) -> Option<Counts> {
        let rest = line.strip_prefix("counts ")?;
        let mut c = Counts::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let n = || v.parse::<u64>().ok();
            match k {
                "iterations" => c.iterations = n()?,
                "denied_succeeded" => c.denied_succeeded = n()?,
                "denied_other_errno" => c.denied_other_errno = n()?,
                "allowed_failed" => c.allowed_failed = n()?,
                "last_errno" => c.last_errno = v.parse().ok()?,
                "first_wrong_ns" => c.first_wrong_ns = n()?,
                "elapsed_ms" => c.elapsed_ms = n()?,
                "stopped_by" => c.stopped_by = v.to_owned(),
                _ => {}
            }
        }
        Some(c)
    }
}

/// Forks the workload into `cg`: open(DENIED) and open(ALLOWED) in a loop, yielding the CPU
/// after each pair, until SIGUSR1 (or [`WORKLOAD_LIMIT`]); then it writes its counts.
fn spawn_workload(cg: &Cgroup) -> Result<Spawned> {
    let denied = cstring(DENIED);
    let allowed = cstring(ALLOWED);
    spawn_in(Some(cg), move |wr| {
        let handler: extern "C" fn(libc::c_int) = request_stop;
        // SAFETY: installing an async-signal-safe handler (it only stores an atomic).
        unsafe { libc::signal(libc::SIGUSR1, handler as libc::sighandler_t) };
        write_line(wr, "ready");
        let started = Instant::now();
        let mut c = Counts::default();
        let wrong = |c: &mut Counts, e: i32| {
            c.last_errno = e;
            if c.first_wrong_ns == 0 {
                c.first_wrong_ns = monotonic_ns();
            }
        };
        c.stopped_by = "SIGUSR1".into();
        while !STOP.load(Ordering::Relaxed) {
            match try_open(&denied) {
                Err(libc::EPERM) => {}
                Ok(()) => {
                    c.denied_succeeded += 1;
                    wrong(&mut c, 0);
                }
                Err(e) => {
                    c.denied_other_errno += 1;
                    wrong(&mut c, e);
                }
            }
            if let Err(e) = try_open(&allowed) {
                c.allowed_failed += 1;
                wrong(&mut c, e);
            }
            c.iterations += 1;
            // SAFETY: plain syscall.
            unsafe { libc::sched_yield() };
            if c.iterations % 256 == 0 && started.elapsed() > WORKLOAD_LIMIT {
                c.stopped_by = "time limit".into();
                break;
            }
        }
        c.elapsed_ms = started.elapsed().as_millis() as u64;
        write_line(wr, &c.to_line());
        0
    })
}

// ---- the poller ----

/// What one poller saw while a version was being put in place.
#[derive(Debug, Default)]
struct Poll {
    /// `CLOCK_MONOTONIC` of the first open of the new marker that got EPERM (0: none).
    first_new_ns: u64,
    samples: u64,
    /// Samples in which the old and new markers were both denied or both allowed, with the
    /// old marker giving the same answer before and after (so no swap fell in between).
    mixed: u64,
    /// An errno other than EPERM, or a timeout.
    problem: String,
}

impl Poll {
    fn parse(line: &str) -> Option<Poll> {
        let rest = line.strip_prefix("poll ")?;
        let mut p = Poll::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "first_new_ns" => p.first_new_ns = v.parse().ok()?,
                "samples" => p.samples = v.parse().ok()?,
                "mixed" => p.mixed = v.parse().ok()?,
                "problem" if v != "none" => p.problem = v.replace('_', " "),
                _ => {}
            }
        }
        Some(p)
    }
}

/// Forks a poller into `cg`: every [`POLL_INTERVAL`] it opens the old marker, the new marker
/// and the old marker again, until the new version is cleanly in force (old allowed twice, new
/// denied) or [`LATENCY_TIMEOUT`].
fn spawn_poller(cg: &Cgroup, old: &str, new: &str) -> Result<Spawned> {
    let old = cstring(old);
    let new = cstring(new);
    spawn_in(Some(cg), move |wr| {
        write_line(wr, "ready");
        let started = Instant::now();
        let mut p = Poll::default();
        loop {
            let a1 = try_open(&old);
            let t = monotonic_ns();
            let b = try_open(&new);
            let a2 = try_open(&old);
            p.samples += 1;
            if let Some(e) = [a1, b, a2]
                .iter()
                .find_map(|r| r.err().filter(|&e| e != libc::EPERM))
            {
                p.problem = format!("errno_{e}");
                break;
            }
            if b.is_err() && p.first_new_ns == 0 {
                p.first_new_ns = t;
            }
            if a1 == a2 {
                match (a1.is_err(), b.is_err()) {
                    (false, true) => break,
                    (true, true) | (false, false) => p.mixed += 1,
                    (true, false) => {}
                }
            }
            if started.elapsed() > LATENCY_TIMEOUT {
                p.problem = "timeout".into();
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        write_line(
            wr,
            &format!(
                "poll first_new_ns={} samples={} mixed={} problem={}",
                p.first_new_ns,
                p.samples,
                p.mixed,
                if p.problem.is_empty() {
                    "none"
                } else {
                    &p.problem
                }
            ),
        );
        0
    })
}

/// How one version took effect.
struct Measured {
    version: u64,
    path: &'static str,
    latency_ms: Option<f64>,
    samples: u64,
    mixed: u64,
    problem: String,
    /// `CLOCK_MONOTONIC` of the change (rename or SIGHUP).
    changed_ns: u64,
}

fn median_and_max(ms: &[f64]) -> Option<(f64, f64)> {
    if ms.is_empty() {
        return None;
    }
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[n - 1]))
}

/// Runs `change` (which returns the `CLOCK_MONOTONIC` of the change) with a poller watching
/// the markers of `previous` (the version in force) and `version`.
fn measure(
    cg: &Cgroup,
    previous: u64,
    version: u64,
    path: &'static str,
    change: impl FnOnce() -> Result<u64>,
) -> Result<Measured> {
    let mut poller = spawn_poller(cg, &marker(previous), &marker(version))?;
    match poller.read_line(Duration::from_secs(10)).as_deref() {
        Some("ready") => {}
        other => {
            let (rest, status) = poller.finish(Duration::from_secs(2));
            bail!("the poller did not start: {other:?} {rest:?} {status:?}");
        }
    }
    let changed_ns = change()?;
    let (lines, status) = poller.finish(LATENCY_TIMEOUT + Duration::from_secs(5));
    let poll = lines.iter().find_map(|l| Poll::parse(l));
    let Some(poll) = poll else {
        return Ok(Measured {
            version,
            path,
            latency_ms: None,
            samples: 0,
            mixed: 0,
            problem: format!("the poller reported nothing ({status:?}): {lines:?}"),
            changed_ns,
        });
    };
    let mut problem = poll.problem.clone();
    if status != WaitStatus::Exited(0) && problem.is_empty() {
        problem = format!("poller ended with {status:?}");
    }
    if let Some(e) = problem.strip_prefix("errno ") {
        problem = format!(
            "open of a marker failed with {}",
            e.parse().map(errno_name).unwrap_or_else(|_| e.to_owned())
        );
    }
    let latency_ms = (poll.first_new_ns != 0 && problem.is_empty())
        .then(|| (poll.first_new_ns as f64 - changed_ns as f64) / 1e6);
    Ok(Measured {
        version,
        path,
        latency_ms,
        samples: poll.samples,
        mixed: poll.mixed,
        problem,
        changed_ns,
    })
}

/// What the daemon does for one second: CPU used and decision output written.
fn daemon_activity(ctx: &Ctx) -> String {
    let Some(d) = ctx.daemon.as_ref() else {
        return "the daemon is not running".into();
    };
    let (t0, b0) = (d.cpu_ticks(), d.stdout_len());
    std::thread::sleep(Duration::from_secs(1));
    let (t1, b1) = (d.cpu_ticks(), d.stdout_len());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let started = Instant::now();
    let status = match status_json() {
        Ok(_) => "answered".to_owned(),
        Err(e) => e.lines().last().unwrap_or_default().to_owned(),
    };
    format!(
        "over the last second the daemon used {} of the CPU and wrote {} KiB of decision \
         lines; enforcerd status after {:.1} s: {status}",
        match (t0, t1) {
            (Some(a), Some(b)) => format!("{}%", (b.saturating_sub(a)) * 100 / hz),
            _ => "(unknown)".into(),
        },
        b1.saturating_sub(b0) / 1024,
        started.elapsed().as_secs_f64()
    )
}

/// Polls `enforcerd status --json` until a reload that finished after `before` (its
/// `last_reload.at`) leaves a status matching `pred`.
fn wait_for_status(
    before: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match status_json() {
            Ok(s) => {
                let at = s
                    .get("last_reload")
                    .map(|r| json_str(r, "at"))
                    .unwrap_or("");
                if at != before && pred(&s) {
                    return Ok(s);
                }
                last = s
                    .get("last_reload")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "no last_reload".into());
            }
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no matching status within {} s; last_reload: {last}",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_reload_at() -> String {
    status_json()
        .ok()
        .and_then(|s| s.get("last_reload").map(|r| json_str(r, "at").to_owned()))
        .unwrap_or_default()
}

fn reload_problems(s: &Value) -> Vec<String> {
    fixtures::json_strings(&s["last_reload"]["problems"])
}

fn profile_entry<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s.get("profiles")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| json_str(p, "name") == name)
}

pub fn replacing_a_profile_never_leaves_a_gap(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(DENIED, "denied\n", 0o644)?;
    fixtures::write(ALLOWED, "allowed\n", 0o644)?;
    for v in 0..=TAMPERED {
        fixtures::write(&marker(v), "marker\n", 0o644)?;
    }
    let key = fixtures::signing_key("signer")?;
    let trusted = fixtures::trusted_dir("live_reload_without_gap", &[&key])?;
    let cg = Cgroup::create(CGROUP)?;
    let aux_cg = Cgroup::create(AUX_CGROUP)?;

    // Every version, written and signed before the clock starts.
    let _ = std::fs::remove_dir_all(STAGING);
    let mut to_sign = Vec::new();
    for v in 0..=TAMPERED {
        let p = staged(&format!("v{v}"), FILE);
        fixtures::write(
            p.to_str().context("path")?,
            &document(&v.to_string(), serial(v), &marker(v)),
            0o644,
        )?;
        to_sign.push(p);
    }
    // The rollback replays version 0 exactly as it was signed.
    let rollback = staged("v0", FILE);
    let aux = staged("aux", AUX_FILE);
    fixtures::write(aux.to_str().context("path")?, &aux_document(), 0o644)?;
    to_sign.push(aux.clone());
    let refs: Vec<&Path> = to_sign.iter().map(PathBuf::as_path).collect();
    fixtures::sign(&key, &refs)?;
    let tampered = staged(&format!("v{TAMPERED}"), FILE);
    fixtures::flip_byte_after(&tampered, "# ")?;
    ctx.note(&format!(
        "signed {} profile versions in {STAGING} with {}; v{TAMPERED} tampered after signing",
        to_sign.len(),
        key.secret
    ));

    // Version 0 in the store, reached through symlinks from the profiles directory.
    let dir = fixtures::profile_dir("live_reload_without_gap")?;
    let store = PathBuf::from(STORE);
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)?;
    prepare(&store, &staged("v0", FILE))?.commit()?;
    for f in [FILE.to_owned(), format!("{FILE}.sig")] {
        std::os::unix::fs::symlink(store.join(&f), dir.join(&f))?;
    }
    prepare(&dir, &aux)?.commit()?;

    ctx.start_daemon_trusting(&dir, &trusted, "daemon_ready")?;
    if let Some(d) = ctx.daemon.as_mut() {
        // The workload causes thousands of denials: keep them off the console.
        d.relay_stdout = false;
    }
    let g = Some(&cg);
    let r = ctx.op(g, &format!("open({}, O_RDONLY)", marker(0)), || {
        open_op(&marker(0), libc::O_RDONLY)
    });
    ctx.expect("first_version_enforced", &Outcome::EPERM, &r);
    let r = ctx.op(Some(&aux_cg), &format!("open({DENIED}, O_RDONLY)"), || {
        open_op(DENIED, libc::O_RDONLY)
    });
    ctx.expect("second_profile_enforced", &Outcome::EPERM, &r);

    let mut workload = spawn_workload(&cg)?;
    let workload_pid = workload.pid;
    if workload.read_line(Duration::from_secs(10)).as_deref() != Some("ready") {
        bail!("the workload did not start");
    }
    ctx.note(&format!(
        "workload pid {} in {CGROUP}: open({DENIED}) and open({ALLOWED}) in a loop",
        workload.pid
    ));

    let mut measured: Vec<Measured> = Vec::new();
    // The last version seen in force: the poller expects its marker denied until the swap.
    let mut in_force = 0;
    for v in 1..=VERSIONS {
        let failing = measured.len() >= GIVE_UP_AFTER
            && measured
                .iter()
                .rev()
                .take(GIVE_UP_AFTER)
                .all(|m| m.latency_ms.is_none());
        if failing {
            ctx.note(&format!(
                "{GIVE_UP_AFTER} versions in a row not in force: versions {v} to {VERSIONS} \
                 not attempted; {}",
                daemon_activity(ctx)
            ));
            break;
        }
        let source = staged(&format!("v{v}"), FILE);
        let m = if v <= SIGHUP_VERSIONS {
            let daemon = ctx.daemon.as_ref().context("no daemon")?;
            measure(&cg, in_force, v, "SIGHUP", || {
                prepare(&store, &source)?.commit()?;
                let t = monotonic_ns();
                if !daemon.sighup() {
                    bail!("cannot send SIGHUP: the daemon is not running");
                }
                Ok(t)
            })?
        } else {
            measure(&cg, in_force, v, "directory", || {
                let r = prepare(&dir, &source)?;
                let t = monotonic_ns();
                r.commit()?;
                Ok(t)
            })?
        };
        if m.latency_ms.is_some() {
            in_force = v;
        }
        ctx.note(&format!(
            "v{v} (serial {}) via {}: {} ({} samples{})",
            serial(v),
            m.path,
            match m.latency_ms {
                Some(ms) => format!("in force after {ms:.0} ms"),
                None => format!("NOT in force: {}", m.problem),
            },
            m.samples,
            if m.mixed > 0 {
                format!(", {} MIXED", m.mixed)
            } else {
                String::new()
            }
        ));
        ctx.relay();
        measured.push(m);
    }

    workload.signal(libc::SIGUSR1);
    let (lines, status) = workload.finish(Duration::from_secs(15));
    let counts = lines.iter().find_map(|l| Counts::parse(l));
    let daemon_alive = ctx.daemon.as_mut().is_some_and(|d| d.running());
    let Some(counts) = counts else {
        ctx.check(
            "workload_reports_its_counts",
            false,
            "a counts line, exit 0",
            format!("{status:?}: {lines:?}"),
            ctx.daemon_stderr_tail(),
        );
        bail!("the workload reported nothing");
    };
    let per_s = counts.iterations as f64 * 1000.0 / counts.elapsed_ms.max(1) as f64;
    ctx.note(&format!(
        "workload: {} iterations in {:.1} s ({per_s:.0}/s), stopped by {}",
        counts.iterations,
        counts.elapsed_ms as f64 / 1000.0,
        counts.stopped_by
    ));
    let wrong_at = if counts.first_wrong_ns != 0 {
        let during = measured
            .iter()
            .rev()
            .find(|m| m.changed_ns <= counts.first_wrong_ns)
            .map_or("before the first replacement".to_owned(), |m| {
                format!(
                    "{:.0} ms after the change to v{} via {}",
                    (counts.first_wrong_ns - m.changed_ns) as f64 / 1e6,
                    m.version,
                    m.path
                )
            });
        let odd = ctx
            .daemon
            .as_ref()
            .map(|d| {
                d.decision_lines()
                    .into_iter()
                    .filter(|(_, v)| {
                        v.get("pid").and_then(Value::as_u64) == Some(u64::from(workload_pid as u32))
                            && json_str(v, "target") != DENIED
                    })
                    .map(|(l, _)| l)
                    .take(5)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Some(format!(
            "first wrong outcome {during} (last errno {}); decisions for the workload (pid \
             {workload_pid}) whose target is not {DENIED}: {}\nenforcerd stderr:\n{}",
            counts.last_errno,
            if odd.is_empty() {
                "none".to_owned()
            } else {
                format!("\n{}", odd.join("\n"))
            },
            ctx.daemon_stderr_tail().unwrap_or_default()
        ))
    } else {
        None
    };
    let summary = format!(
        "{} iterations in {:.1} s ({per_s:.0}/s), stopped by {}",
        counts.iterations,
        counts.elapsed_ms as f64 / 1000.0,
        counts.stopped_by
    );
    ctx.check(
        "workload_denied_open_never_succeeded",
        counts.denied_succeeded == 0 && counts.denied_other_errno == 0,
        format!("0 opens of {DENIED} succeeded, every one got EPERM"),
        format!(
            "{} succeeded, {} failed with another errno; {summary}",
            counts.denied_succeeded, counts.denied_other_errno
        ),
        wrong_at.clone(),
    );
    ctx.check(
        "workload_allowed_open_never_failed",
        counts.allowed_failed == 0,
        format!("0 opens of {ALLOWED} failed"),
        format!("{} failed; {summary}", counts.allowed_failed),
        wrong_at,
    );
    let ran_through = counts.stopped_by == "SIGUSR1" && status == WaitStatus::Exited(0);
    ctx.check(
        "workload_ran_throughout",
        ran_through && counts.iterations >= MIN_ITERATIONS,
        format!(
            "at least {MIN_ITERATIONS} iterations, running until stopped by SIGUSR1 after all \
             {VERSIONS} replacements"
        ),
        format!("{summary}; {status:?}"),
        None,
    );

    let in_force = measured.iter().filter(|m| m.latency_ms.is_some()).count();
    let attempted = measured.len();
    let all: Vec<String> = measured
        .iter()
        .map(|m| match m.latency_ms {
            Some(ms) => format!("v{} {} {ms:.0} ms", m.version, m.path),
            None => format!("v{} {} {}", m.version, m.path, m.problem),
        })
        .collect();
    ctx.check(
        "every_version_took_effect",
        in_force as u64 == VERSIONS && daemon_alive,
        format!(
            "{VERSIONS} of {VERSIONS} versions in force within {} s each (daemon running)",
            LATENCY_TIMEOUT.as_secs()
        ),
        format!(
            "{in_force} of {VERSIONS} versions in force ({attempted} attempted){}",
            if daemon_alive {
                ""
            } else {
                "; the daemon exited"
            }
        ),
        Some(all.join(", ")),
    );
    let samples: u64 = measured.iter().map(|m| m.samples).sum();
    let mixed: Vec<String> = measured
        .iter()
        .filter(|m| m.mixed > 0)
        .map(|m| format!("v{} via {}: {} mixed samples", m.version, m.path, m.mixed))
        .collect();
    ctx.check(
        "no_half_old_half_new_state_observed",
        mixed.is_empty() && samples > 0,
        "0 samples with both markers denied or both allowed",
        if mixed.is_empty() {
            format!("0 mixed samples in {samples}")
        } else {
            mixed.join("; ")
        },
        None,
    );
    for (path, planned) in [
        ("SIGHUP", SIGHUP_VERSIONS),
        ("directory", VERSIONS - SIGHUP_VERSIONS),
    ] {
        let of_path: Vec<&Measured> = measured.iter().filter(|m| m.path == path).collect();
        let ms: Vec<f64> = of_path.iter().filter_map(|m| m.latency_ms).collect();
        let line = match median_and_max(&ms) {
            Some((median, max)) => format!(
                "reload latency ({path}): median {median:.0} ms, max {max:.0} ms over {}",
                ms.len()
            ),
            None => format!("reload latency ({path}): no version took effect"),
        };
        ctx.note(&line);
        ctx.check(
            &format!(
                "reload_latency_{}_measured",
                if path == "SIGHUP" { "sighup" } else { path }
            ),
            ms.len() as u64 == planned,
            format!(
                "each of the {planned} {path} replacements in force within {} s",
                LATENCY_TIMEOUT.as_secs()
            ),
            line,
            Some(
                of_path
                    .iter()
                    .map(|m| match m.latency_ms {
                        Some(ms) => format!("v{} {ms:.0} ms", m.version),
                        None => format!("v{} {}", m.version, m.problem),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        );
    }
    let last = staged(&format!("v{VERSIONS}"), FILE);
    let last_sha = sha256_ref(&last);
    let status = status_json();
    let entry = status
        .as_ref()
        .ok()
        .and_then(|s| profile_entry(s, NAME))
        .cloned();
    let got_serial = entry
        .as_ref()
        .and_then(|p| p.get("serial"))
        .and_then(Value::as_u64);
    let got_sha = entry
        .as_ref()
        .map(|p| json_str(p, "sha256").to_owned())
        .unwrap_or_default();
    ctx.check(
        "status_shows_last_serial",
        got_serial == Some(serial(VERSIONS))
            && last_sha
                .as_ref()
                .is_some_and(|s| s.eq_ignore_ascii_case(&got_sha)),
        format!(
            "profile {NAME}: serial {}, {}",
            serial(VERSIONS),
            last_sha.as_deref().unwrap_or("sha256 of the last version")
        ),
        match &status {
            Ok(_) => format!(
                "profile {NAME}: serial {}, {got_sha}",
                got_serial.map_or("(none)".to_owned(), |s| s.to_string())
            ),
            Err(e) => e.clone(),
        },
        None,
    );
    if let Some(d) = ctx.daemon.as_mut() {
        d.discard_stdout();
    }
    // What follows is measured against the version actually in force.
    let applied = got_serial.unwrap_or(1);
    let current = applied.saturating_sub(1);
    if applied != serial(VERSIONS) {
        ctx.note(&format!(
            "continuing with v{current} (serial {applied}) as the version in force"
        ));
    }

    // A tampered replacement: refused, the previous version stays in force.
    let file = dir.join(FILE).display().to_string();
    let before = last_reload_at();
    prepare(&dir, &tampered)?.commit()?;
    let waited = wait_for_status(&before, LATENCY_TIMEOUT, |s| {
        reload_problems(s)
            .iter()
            .any(|p| p.contains(&file) && p.contains("does not match its signature"))
    });
    report_refusal(
        ctx,
        "tampered_replacement_refused",
        &waited,
        &file,
        "does not match its signature",
    );
    let r = ctx.op(
        g,
        &format!(
            "open({}, O_RDONLY) after the tampered v{TAMPERED}",
            marker(current)
        ),
        || open_op(&marker(current), libc::O_RDONLY),
    );
    ctx.expect(
        "previous_version_in_force_after_tampered_replacement",
        &Outcome::EPERM,
        &r,
    );
    let r = ctx.op(g, &format!("open({}, O_RDONLY)", marker(TAMPERED)), || {
        open_op(&marker(TAMPERED), libc::O_RDONLY)
    });
    ctx.expect("tampered_version_not_applied", &Outcome::Ok, &r);

    // A rolled-back serial: refused, the previous version stays in force.
    let before = last_reload_at();
    prepare(&dir, &rollback)?.commit()?;
    let waited = wait_for_status(&before, LATENCY_TIMEOUT, |s| {
        reload_problems(s)
            .iter()
            .any(|p| p.contains(&file) && p.contains("rolled back"))
    });
    report_refusal(
        ctx,
        "rolled_back_serial_refused",
        &waited,
        &file,
        &format!(
            "rolled back: serial {} is lower than serial {applied} already applied for profile \
             {NAME}",
            serial(0)
        ),
    );
    let r = ctx.op(
        g,
        &format!("open({}, O_RDONLY) after the rollback", marker(current)),
        || open_op(&marker(current), libc::O_RDONLY),
    );
    ctx.expect(
        "previous_version_in_force_after_rollback",
        &Outcome::EPERM,
        &r,
    );
    let r = ctx.op(g, &format!("open({}, O_RDONLY)", marker(0)), || {
        open_op(&marker(0), libc::O_RDONLY)
    });
    ctx.expect("rolled_back_version_not_applied", &Outcome::Ok, &r);

    // Deleting a profile file: once the reload is done, its cgroup is no longer governed.
    let before = last_reload_at();
    let aux_file = dir.join(AUX_FILE);
    std::fs::remove_file(sig_path(&aux_file))?;
    std::fs::remove_file(&aux_file)?;
    let waited = wait_for_status(&before, LATENCY_TIMEOUT, |s| {
        profile_entry(s, AUX_NAME).is_none()
    });
    ctx.check(
        "deleted_profile_leaves_status",
        waited.is_ok(),
        format!(
            "a reload after deleting {} drops profile {AUX_NAME}",
            aux_file.display()
        ),
        match &waited {
            Ok(s) => format!(
                "profiles: [{}]",
                s.get("profiles")
                    .and_then(Value::as_array)
                    .map(|a| a
                        .iter()
                        .map(|p| json_str(p, "name"))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ),
            Err(e) => e.clone(),
        },
        None,
    );
    let r = ctx.op(
        Some(&aux_cg),
        &format!("open({DENIED}, O_RDONLY) after {AUX_FILE} was deleted"),
        || open_op(DENIED, libc::O_RDONLY),
    );
    ctx.expect("deleted_profile_no_longer_enforced", &Outcome::Ok, &r);
    let r = ctx.op(g, &format!("open({DENIED}, O_RDONLY)"), || {
        open_op(DENIED, libc::O_RDONLY)
    });
    ctx.expect(
        "remaining_profile_enforced_after_deletion",
        &Outcome::EPERM,
        &r,
    );

    let serials = std::fs::read_to_string("/var/lib/enforcerd/serials.json").unwrap_or_default();
    let recorded = serde_json::from_str::<Value>(&serials)
        .ok()
        .and_then(|v| find_key(&v, NAME).and_then(Value::as_u64));
    ctx.check(
        "highest_serial_persisted",
        recorded == Some(applied),
        format!("/var/lib/enforcerd/serials.json records serial {applied} for {NAME}"),
        if serials.is_empty() {
            "/var/lib/enforcerd/serials.json is missing or empty".to_owned()
        } else {
            serials.trim_end().to_owned()
        },
        None,
    );

    // The directory now holds only the rolled-back profile: still refused after a restart.
    ctx.stop_daemon("daemon_stops_on_sigterm");
    ctx.start_daemon_trusting(&dir, &trusted, "daemon_restarts_with_rolled_back_profile")?;
    let r = ctx.op(
        g,
        &format!("open({DENIED}, O_RDONLY) after the restart"),
        || open_op(DENIED, libc::O_RDONLY),
    );
    ctx.expect(
        "rolled_back_profile_not_enforced_after_restart",
        &Outcome::Ok,
        &r,
    );
    let r = ctx.op(g, &format!("open({}, O_RDONLY)", marker(0)), || {
        open_op(&marker(0), libc::O_RDONLY)
    });
    ctx.expect("rolled_back_marker_allowed_after_restart", &Outcome::Ok, &r);
    let status = status_json().map(|s| s.get("last_reload").cloned().unwrap_or(Value::Null));
    let waited = status.and_then(|lr| {
        let s = serde_json::json!({ "last_reload": lr });
        if reload_problems(&s)
            .iter()
            .any(|p| p.contains(&file) && p.contains("rolled back"))
        {
            Ok(s)
        } else {
            Err(format!("last_reload: {lr}"))
        }
    });
    report_refusal(
        ctx,
        "rolled_back_serial_refused_after_restart",
        &waited,
        &file,
        "rolled back",
    );
    ctx.stop_daemon("restarted_daemon_stops_on_sigterm");
    Ok(())
}

/// Records that a status's last reload names `file` with `reason` among its problems.
fn report_refusal(
    ctx: &mut Ctx,
    check: &str,
    waited: &Result<Value, String>,
    file: &str,
    reason: &str,
) {
    let got = match waited {
        Ok(s) => reload_problems(s)
            .into_iter()
            .filter(|p| p.contains(file))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => e.clone(),
    };
    let detail = if waited.is_ok() {
        None
    } else {
        ctx.daemon_stderr_tail()
            .map(|s| format!("enforcerd stderr:\n{s}"))
    };
    ctx.check(
        check,
        waited.is_ok(),
        format!("status last_reload.problems: {file}: {reason}"),
        got,
        detail,
    );
}

/// The value of the first `key` anywhere in a JSON document.
fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// `sha256:<hex>` of a file, by busybox.
fn sha256_ref(path: &Path) -> Option<String> {
    let out = run_command(fixtures::BUSYBOX, &["sha256sum", path.to_str()?]);
    let hex = out.stdout.split_whitespace().next()?;
    (out.code == Some(0) && hex.len() == 64).then(|| format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_through_their_lines() {
        let c = Counts {
            iterations: 12,
            denied_succeeded: 1,
            allowed_failed: 2,
            last_errno: 13,
            first_wrong_ns: 99,
            elapsed_ms: 5,
            stopped_by: "SIGUSR1".into(),
            ..Counts::default()
        };
        let back = Counts::parse(&c.to_line()).unwrap();
        assert_eq!(back.to_line(), c.to_line());
        let p = Poll::parse("poll first_new_ns=7 samples=3 mixed=1 problem=errno_2").unwrap();
        assert_eq!((p.first_new_ns, p.samples, p.mixed), (7, 3, 1));
        assert_eq!(p.problem, "errno 2");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_and_max(&[3.0, 1.0, 2.0]), Some((2.0, 3.0)));
        assert_eq!(median_and_max(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 4.0)));
        assert_eq!(median_and_max(&[]), None);
    }

    #[test]
    fn versions_differ_only_in_serial_marker_and_revision() {
        let a = document("1", 2, &marker(1));
        let b = document("2", 3, &marker(2));
        assert!(a.contains("  serial: 2\n") && a.contains("/srv/reload/v1,"));
        assert!(a.ends_with("# revision 1\n"));
        assert_eq!(a.lines().count(), b.lines().count());
        assert!(a.contains(&format!("cgroup: {CGROUP}\n")));
    }

    #[test]
    fn keys_are_found_at_any_depth() {
        let v: Value = serde_json::json!({"profiles": {"live-reload": 51}});
        assert_eq!(
            find_key(&v, "live-reload").and_then(Value::as_u64),
            Some(51)
        );
        assert!(find_key(&v, "other").is_none());
    }
}
