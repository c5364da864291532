//! Enforcement survives the daemon. A governed workload opens a denied file in a tight loop
//! while the daemon is SIGKILLed (as the OOM killer would), restarted, stopped with SIGTERM
//! and started again — or replaced by a build whose BPF object differs (an upgrade). Not one
//! open succeeds at any point: the pinned programs keep enforcing while no daemon runs, and a
//! starting daemon attaches its own programs before it retires the pinned ones. After each
//! start, the workload's denials are reported again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::guest::daemon::{DECISION_TIMEOUT, ENFORCERD, ENFORCERD_PREVIOUS, Launch, status_json};
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL, json_str};
use crate::guest::out::Ctx;
use crate::guest::sys::{
    Cgroup, Outcome, Spawned, WaitStatus, cstring, monotonic_ns, spawn_in, try_open, write_line,
};
use anyhow::{Result, bail};

const SECRET: &str = "/srv/restart/secret";
/// The workload stops when this file exists (a stat, which no hook governs).
const STOP: &str = "/tmp/restart-workload-stop";
const PIN_ROOT: &str = "/sys/fs/bpf/enforcerd";
/// How long the workload runs with no daemon at all.
const DEAD_TIME: Duration = Duration::from_millis(1500);

pub fn sigkill_and_restart_leave_no_gap(ctx: &mut Ctx) -> Result<()> {
    let (cg, dir) = setup("restart", "sigkill")?;
    start(ctx, ENFORCERD, &dir, "daemon_ready")?;
    let mut workload = Workload::start(&cg)?;
    workload.expect_running(ctx, "workload_denied_while_daemon_runs")?;

    let first = pinned_generation(ctx, "first")?;
    let killed_at = monotonic_ns();
    let ended = ctx.take_daemon().map(|d| d.kill_keeping_pins());
    ctx.note(&format!("SIGKILLed the daemon: {ended:?}"));
    while_no_daemon_runs(ctx, &cg, &first, "after_sigkill")?;
    start(ctx, ENFORCERD, &dir, "restarted_after_sigkill")?;
    let restarted_at = monotonic_ns();
    let second = pinned_generation(ctx, "restarted")?;
    took_over(ctx, &first, &second, "restart_after_sigkill");
    reports_resume(ctx, workload.pid(), "reports_resume_after_sigkill_restart");

    // The stop `systemctl stop` and upgrades use: SIGTERM with the default `--on-stop keep`.
    let stopped = ctx
        .take_daemon()
        .map(crate::guest::daemon::Daemon::stop_keeping_pins);
    ctx.check(
        "sigterm_exits_0_keeping_pins",
        matches!(stopped, Some(Ok(_))),
        "exit 0",
        format!("{stopped:?}"),
        None,
    );
    while_no_daemon_runs(ctx, &cg, &second, "after_sigterm")?;
    start(ctx, ENFORCERD, &dir, "restarted_after_sigterm")?;
    let third = pinned_generation(ctx, "restarted again")?;
    took_over(ctx, &second, &third, "restart_after_sigterm");
    reports_resume(ctx, workload.pid(), "reports_resume_after_sigterm_restart");

    workload.finish(ctx, killed_at, restarted_at);
    Ok(())
}

pub fn upgrade_to_a_rebuilt_binary_leaves_no_gap(ctx: &mut Ctx) -> Result<()> {
    let present = Path::new(ENFORCERD_PREVIOUS).is_file();
    ctx.check(
        "previous_build_present",
        present,
        format!("{ENFORCERD_PREVIOUS} (built by tools/dev with another BPF object)"),
        if present { "present" } else { "missing" },
        None,
    );
    if !present {
        bail!("{ENFORCERD_PREVIOUS} is missing");
    }
    let (cg, dir) = setup("upgrade", "upgrade")?;
    start(ctx, ENFORCERD_PREVIOUS, &dir, "previous_build_ready")?;
    let mut workload = Workload::start(&cg)?;
    workload.expect_running(ctx, "workload_denied_under_previous_build")?;
    let old = pinned_generation(ctx, "previous build")?;

    let killed_at = monotonic_ns();
    let ended = ctx.take_daemon().map(|d| d.kill_keeping_pins());
    ctx.note(&format!("SIGKILLed the previous build: {ended:?}"));
    while_no_daemon_runs(ctx, &cg, &old, "after_killing_previous_build")?;
    start(ctx, ENFORCERD, &dir, "new_build_ready")?;
    let upgraded_at = monotonic_ns();
    let new = pinned_generation(ctx, "new build")?;
    // Generation names end in the first 12 hex digits of their BPF object's sha256.
    let object = |g: &Path| {
        g.file_name()
            .map(|n| {
                n.to_string_lossy()
                    .rsplit('-')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    ctx.check(
        "bpf_object_changed",
        object(&old) != object(&new) && !object(&new).is_empty(),
        "the two builds pin different BPF objects",
        format!("{} -> {}", object(&old), object(&new)),
        None,
    );
    took_over(ctx, &old, &new, "upgrade");
    reports_resume(ctx, workload.pid(), "reports_resume_after_upgrade");
    workload.finish(ctx, killed_at, upgraded_at);
    Ok(())
}

/// A cgroup `/NAME` and a profile denying reads of `SECRET` there.
fn setup(name: &str, profile: &str) -> Result<(Cgroup, PathBuf)> {
    fixtures::write(SECRET, "secret\n", 0o644)?;
    let _ = std::fs::remove_file(STOP);
    let cg = Cgroup::create(&format!("/{name}"))?;
    let dir = fixtures::profile_dir(name)?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:\n    default: allow\n    rules:\n      - {{path: {SECRET}, access: [read], action: deny}}\n{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        &format!("{profile}.yaml"),
        &fixtures::profile(profile, &cg.rel, "enforce", "deny", &body),
    )?;
    Ok((cg, dir))
}

fn start(ctx: &mut Ctx, binary: &str, profiles: &Path, check: &str) -> Result<()> {
    let how = Launch {
        binary,
        ..Launch::default()
    };
    ctx.launch_daemon(profiles, &how, check)
}

/// The running daemon's pinned generation, from `status`, checked to hold its links.
fn pinned_generation(ctx: &mut Ctx, which: &str) -> Result<PathBuf> {
    let status = status_json().map_err(anyhow::Error::msg)?;
    let generation = PathBuf::from(json_str(&status, "pinned_in"));
    let links = [
        "bprm_check_security",
        "file_open",
        "socket_connect",
        "socket_sendmsg",
        "bprm_committed_creds",
        "mmap_file",
        "path_link",
        "path_rename",
    ]
    .map(|l| generation.join(format!("link_{l}")));
    let ok = generation.starts_with(PIN_ROOT) && links.iter().all(|l| l.exists());
    ctx.check(
        &format!("pinned_{}", which.replace(' ', "_")),
        ok,
        format!("status names a generation under {PIN_ROOT} holding the LSM links"),
        generation.display().to_string(),
        None,
    );
    if !ok {
        bail!("no pinned generation for the {which} daemon");
    }
    Ok(generation)
}

/// With no daemon: the generation stays pinned and the kernel still denies.
fn while_no_daemon_runs(ctx: &mut Ctx, cg: &Cgroup, generation: &Path, when: &str) -> Result<()> {
    let link = generation.join("link_file_open");
    ctx.check(
        &format!("still_pinned_{when}"),
        link.exists(),
        format!("{} exists", link.display()),
        if link.exists() { "exists" } else { "gone" },
        None,
    );
    std::thread::sleep(DEAD_TIME / 2);
    let secret = cstring(SECRET);
    let run = ctx.op(Some(cg), &format!("open {SECRET}"), || try_open(&secret));
    ctx.expect(
        &format!("denied_with_no_daemon_{when}"),
        &Outcome::Errno(libc::EPERM),
        &run,
    );
    std::thread::sleep(DEAD_TIME / 2);
    Ok(())
}

/// The new daemon's generation replaced the old one: exactly one is pinned.
fn took_over(ctx: &mut Ctx, old: &Path, new: &Path, when: &str) {
    let pinned: Vec<PathBuf> = std::fs::read_dir(PIN_ROOT)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    ctx.check(
        &format!("old_generation_retired_{when}"),
        !old.exists() && pinned == [new.to_owned()],
        format!("only {} pinned", new.display()),
        format!("{pinned:?}"),
        None,
    );
}

/// The running daemon reports the workload's denials again.
fn reports_resume(ctx: &mut Ctx, pid: i32, check: &str) {
    let found = ctx.daemon.as_mut().and_then(|d| {
        d.wait_decision(DECISION_TIMEOUT, |v| {
            v["target"] == SECRET && v["pid"] == pid && v["decision"] == "deny"
        })
    });
    ctx.check(
        check,
        found.is_some(),
        format!("a deny decision for {SECRET} by pid {pid}"),
        found.map_or("none".into(), |v| v.to_string()),
        None,
    );
}

/// A process in the governed cgroup that opens `SECRET` as fast as it can and reports, every
/// 100 ms, `<monotonic ns> <attempts> <succeeded> <failed otherwise than EPERM>`.
struct Workload {
    child: Spawned,
    lines: Vec<String>,
}

impl Workload {
    fn start(cg: &Cgroup) -> Result<Workload> {
        let secret = cstring(SECRET);
        let child = spawn_in(Some(cg), move |fd| {
            let (mut attempts, mut succeeded, mut other) = (0u64, 0u64, 0u64);
            let mut next = monotonic_ns();
            loop {
                match try_open(&secret) {
                    Ok(()) => succeeded += 1,
                    Err(libc::EPERM) => {}
                    Err(_) => other += 1,
                }
                attempts += 1;
                if attempts % 32 == 0 {
                    let now = monotonic_ns();
                    if now >= next {
                        write_line(fd, &format!("{now} {attempts} {succeeded} {other}"));
                        next = now + 100_000_000;
                        if Path::new(STOP).exists() {
                            return 0;
                        }
                    }
                }
            }
        })?;
        Ok(Workload {
            child,
            lines: Vec::new(),
        })
    }

    fn pid(&self) -> i32 {
        self.child.pid
    }

    /// Waits for the workload's first reports: it is looping and every open is denied.
    fn expect_running(&mut self, ctx: &mut Ctx, check: &str) -> Result<()> {
        for _ in 0..3 {
            if let Some(line) = self.child.read_line(Duration::from_secs(5)) {
                self.lines.push(line);
            }
        }
        let last = self.lines.last().map(|l| parse(l));
        let ok = matches!(last, Some(Some((_, attempts, 0, 0))) if attempts > 0);
        ctx.check(
            check,
            ok,
            "the workload is looping; every open failed with EPERM",
            format!("{:?}", self.lines),
            None,
        );
        if !ok {
            bail!("the workload is not running as expected");
        }
        Ok(())
    }

    /// Stops the workload; checks it kept trying while no daemon ran and never succeeded.
    fn finish(mut self, ctx: &mut Ctx, killed_at: u64, restarted_at: u64) {
        let _ = std::fs::write(STOP, b"");
        let (rest, status) = self.child.finish(Duration::from_secs(30));
        self.lines.extend(rest);
        let reports: Vec<_> = self.lines.iter().filter_map(|l| parse(l)).collect();
        let last = reports.last().copied().unwrap_or_default();
        let attempts_at = |t: u64| {
            reports
                .iter()
                .filter(|r| r.0 <= t)
                .map(|r| r.1)
                .max()
                .unwrap_or(0)
        };
        let while_dead = attempts_at(restarted_at).saturating_sub(attempts_at(killed_at));
        ctx.note(&format!(
            "workload: {} opens in all, {while_dead} between the kill and the new daemon's \
             READY=1",
            last.1
        ));
        ctx.check(
            "workload_kept_trying_while_no_daemon_ran",
            while_dead > 0,
            "opens attempted between the kill and the restart",
            format!("{while_dead}"),
            None,
        );
        ctx.check(
            "not_one_open_succeeded",
            status == WaitStatus::Exited(0) && last.1 > 0 && last.2 == 0 && last.3 == 0,
            "every open failed with EPERM, from the first to the last",
            format!(
                "{} attempts, {} succeeded, {} failed otherwise; {status:?}",
                last.1, last.2, last.3
            ),
            None,
        );
        let _ = std::fs::remove_file(STOP);
    }
}

fn parse(line: &str) -> Option<(u64, u64, u64, u64)> {
    let n: Vec<u64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
    match n[..] {
        [t, a, s, o] => Some((t, a, s, o)),
        _ => None,
    }
}
