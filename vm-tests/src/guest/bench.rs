//! `vm-guest bench`: the benchmark's guest side (see [`crate::bench`] for the cases and
//! operations). For each case the runner sets up the enforcement (nothing, enforcerd with
//! some profile set, or an AppArmor profile), then runs one fresh worker process per operation
//! in the benchmark cgroup and emits its figures as `@@BENCH` lines.
//!
//! A benchmark of an enforcer that is not enforcing proves nothing, so each worker also tries
//! one open the case's policy must refuse and reports its AppArmor label; the runner checks
//! both (`@@RESULT` lines), so a misconfigured case fails the run instead of yielding a
//! flattering figure.

use std::ffi::CString;
use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::daemon::run_command;
use super::fixtures;
use super::out::{Ctx, emit, say};
use super::sys::{
    Cgroup, WaitStatus, bpf_program_stats, cstring, errno, errno_name, monotonic_ns, sockaddr,
    spawn_in, try_open, write_line,
};
use crate::bench::{BenchResult, CASES, Case, OPS, Op, ProgramCost, Stats};
use crate::protocol::Event;

/// The file every open loop opens; every policy allows reading it.
const ALLOWED: &str = "/srv/bench/allowed";
/// The file every policy except "none" refuses: the worker's proof that it is governed.
const DENIED: &str = "/srv/bench-denied/secret";
const PORT: u16 = 7070;
/// The exec loop runs this with argument `exit`, which returns before anything else (see
/// `src/bin/vm-guest.rs`): a dynamically linked Rust binary, so the exec includes the loader
/// opening its libraries.
const EXEC_TARGET: &str = "/bin/vm-guest";
const WORKLOAD: &str = "/bench/workload";
const APPARMOR_PARSER: &str = "/bin/apparmor_parser";
const APPARMOR_PROFILE_FILE: &str = "/tmp/enforcerd-bench.apparmor";
const APPARMOR_PROFILE: &str = "enforcerd-bench";
/// A worker's time limit (the exec loop is the longest: about a second of guest time).
const WORKER_TIMEOUT: Duration = Duration::from_secs(900);

/// What a worker prints on its stdout (one JSON line) after its loop.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    pub stats: Stats,
    /// The errno of `open(DENIED)`, 0 if it opened.
    pub probe_errno: i32,
    /// `/proc/self/attr/current`: the AppArmor label (`unconfined` outside a profile).
    pub label: String,
}

/// The profile the worker runs under in cases c and d: what a small service needs (its
/// libraries, /etc, /proc, its data, one upstream), everything else denied.
fn realistic_body(extra_files: usize, extra_exec: usize, extra_cidrs: usize) -> String {
    let mut s = String::from("  exec:\n    default: deny\n    allow:\n");
    s.push_str("      - /bin/vm-guest\n      - /usr/bin/\n      - /usr/sbin/\n");
    for i in 0..extra_exec {
        s.push_str(&format!("      - /opt/tools/t{i:04}/bin/run\n"));
    }
    s.push_str("  files:\n    default: deny\n    rules:\n");
    for dir in [
        "/lib/",
        "/lib64/",
        "/usr/lib/",
        "/etc/",
        "/proc/",
        "/sys/",
        "/srv/bench/",
    ] {
        s.push_str(&format!(
            "      - {{path: {dir}, access: [read], action: allow}}\n"
        ));
    }
    for dev in ["/dev/null", "/dev/console", "/tmp/"] {
        s.push_str(&format!(
            "      - {{path: {dev}, access: [read, write], action: allow}}\n"
        ));
    }
    for i in 0..extra_files {
        // Half allow, half deny, spread over many directories so the trie really branches.
        let action = if i % 2 == 0 { "allow" } else { "deny" };
        s.push_str(&format!(
            "      - {{path: /srv/data/s{:03}/f{i:05}, access: [read, write], action: {action}}}\n",
            i % 997
        ));
    }
    s.push_str("  network:\n    connect:\n      default: deny\n      allow:\n");
    s.push_str(&format!(
        "        - {{cidr: 127.0.0.1/32, ports: [{PORT}], protocol: tcp}}\n\
         \x20       - {{cidr: 10.0.2.0/24, ports: [5432], protocol: tcp}}\n"
    ));
    for i in 0..extra_cidrs {
        s.push_str(&format!(
            "        - {{cidr: 10.{}.{}.0/24, ports: [443], protocol: tcp}}\n",
            100 + i / 256,
            i % 256
        ));
    }
    s
}

/// The AppArmor equivalent of [`realistic_body`]. AppArmor 3.0 has no address or port in
/// network rules, so its network rule is coarser (any IPv4 TCP peer).
fn apparmor_profile() -> String {
    format!(
        "profile {APPARMOR_PROFILE} {{\n\
         \x20 /bin/vm-guest mrix,\n\
         \x20 /usr/bin/** mrix,\n\
         \x20 /usr/sbin/** mrix,\n\
         \x20 /lib/** mr,\n\
         \x20 /lib64/** mr,\n\
         \x20 /usr/lib/** mr,\n\
         \x20 /etc/** r,\n\
         \x20 /proc/** r,\n\
         \x20 /sys/** r,\n\
         \x20 /srv/bench/** r,\n\
         \x20 /dev/null rw,\n\
         \x20 /dev/console rw,\n\
         \x20 /tmp/** rw,\n\
         \x20 network inet stream,\n\
         }}\n"
    )
}

/// `vm-guest bench`: every case, every operation; the exit status says whether every case
/// was set up and proven enforcing (the figures themselves are not judged here).
pub fn run(quick: bool) -> u8 {
    emit(&Event::ScenarioStart("bench".into()));
    let mut ctx = Ctx::new("bench");
    ctx.run_recording_abort("(benchmark aborted)", "every case runs", |ctx| {
        run_cases(ctx, quick)
    });
    emit(&Event::ScenarioEnd("bench".into()));
    let failed = ctx.failed > 0;
    emit(&Event::Done(if failed { "failed" } else { "ok" }.into()));
    u8::from(failed)
}

fn run_cases(ctx: &mut Ctx, quick: bool) -> Result<()> {
    fixtures::write(ALLOWED, "allowed\n", 0o644)?;
    fixtures::write(DENIED, "secret\n", 0o644)?;
    let workload = Cgroup::create(WORKLOAD)?;
    for case in CASES {
        say(&format!("[bench] case ({}) {}", case.id, case.about));
        let expect = prepare(ctx, case)?;
        for op in OPS {
            let report = run_worker(&workload, op, expect.apparmor, quick)
                .with_context(|| format!("case ({}) {}", case.id, op.id))?;
            say(&format!(
                "[bench] ({}) {}: median {} ns, p99 {} ns, mean {} ns over {}",
                case.id,
                op.id,
                report.stats.median_ns,
                report.stats.p99_ns,
                report.stats.mean_ns,
                report.stats.iterations
            ));
            ctx.check(
                &format!("case_{}_{}_worker_under_expected_policy", case.id, op.id),
                report.probe_errno == expect.probe_errno && report.label.contains(expect.label),
                format!(
                    "open({DENIED}): {}; label {:?}",
                    errno_name(expect.probe_errno),
                    expect.label
                ),
                format!(
                    "open({DENIED}): {}; label {:?}",
                    errno_name(report.probe_errno),
                    report.label
                ),
                None,
            );
            emit(&Event::Bench(BenchResult {
                case: case.id.into(),
                op: op.id.into(),
                stats: report.stats,
            }));
        }
        if ctx.daemon.is_some() {
            profile_programs(case, &workload, quick)?;
        }
        if expect.apparmor {
            let out = run_command(APPARMOR_PARSER, &["-R", "-K", APPARMOR_PROFILE_FILE]);
            ctx.check(
                "apparmor_profile_removed",
                out.code == Some(0),
                "apparmor_parser -R exits 0",
                out.summary(),
                None,
            );
        }
    }
    Ok(())
}

/// The second pass of a case with enforcerd: each loop again with the kernel's BPF run-time
/// accounting on, reporting what each program cost per run.
fn profile_programs(case: &Case, workload: &Cgroup, quick: bool) -> Result<()> {
    const STATS_SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    std::fs::write(STATS_SWITCH, "1").with_context(|| format!("writing 1 to {STATS_SWITCH}"))?;
    let result = OPS.iter().try_for_each(|op| {
        let before = bpf_program_stats()?;
        run_worker(workload, op, false, quick)?;
        for after in bpf_program_stats()? {
            let Some(b) = before.iter().find(|b| b.id == after.id) else {
                continue;
            };
            let runs = after.run_cnt - b.run_cnt;
            if runs == 0 {
                continue;
            }
            let ns_per_run = (after.run_time_ns - b.run_time_ns) / runs;
            say(&format!(
                "[bench] ({}) {}: program {} ran {runs} times, {ns_per_run} ns per run",
                case.id, op.id, after.name
            ));
            emit(&Event::BenchProgram(ProgramCost {
                case: case.id.into(),
                op: op.id.into(),
                program: after.name,
                runs,
                ns_per_run,
            }));
        }
        anyhow::Ok(())
    });
    std::fs::write(STATS_SWITCH, "0").with_context(|| format!("writing 0 to {STATS_SWITCH}"))?;
    result
}

/// What a case's worker must observe.
struct Expect {
    probe_errno: i32,
    label: &'static str,
    /// Workers enter the AppArmor profile at their exec.
    apparmor: bool,
}

/// Puts the case's enforcement in place (stopping what the previous case ran).
fn prepare(ctx: &mut Ctx, case: &Case) -> Result<Expect> {
    ctx.stop_daemon_quietly();
    let none = Expect {
        probe_errno: 0,
        label: "unconfined",
        apparmor: false,
    };
    let enforced = Expect {
        probe_errno: libc::EPERM,
        ..none
    };
    let dir = fixtures::profile_dir(&format!("bench-{}", case.id))?;
    let workload_profile = |extra_files, extra_exec, extra_cidrs| {
        fixtures::profile(
            "bench",
            WORKLOAD,
            "enforce",
            "deny",
            &realistic_body(extra_files, extra_exec, extra_cidrs),
        )
    };
    match case.id {
        "a" | "a2" => Ok(none),
        "b" => {
            fixtures::service_profiles(&dir, "/bench-others", 100)?;
            ctx.start_daemon(&dir, "case_b_enforcerd_ready")?;
            Ok(none)
        }
        "c" => {
            fixtures::write_profile(&dir, "bench.yaml", &workload_profile(0, 0, 0))?;
            ctx.start_daemon(&dir, "case_c_enforcerd_ready")?;
            Ok(enforced)
        }
        "d" => {
            fixtures::write_profile(&dir, "bench.yaml", &workload_profile(10_000, 1_000, 1_000))?;
            ctx.start_daemon(&dir, "case_d_enforcerd_ready")?;
            Ok(enforced)
        }
        "e" => {
            fixtures::write(APPARMOR_PROFILE_FILE, &apparmor_profile(), 0o644)?;
            let out = run_command(APPARMOR_PARSER, &["-r", "-K", APPARMOR_PROFILE_FILE]);
            let loaded = out.code == Some(0);
            ctx.check(
                "apparmor_profile_loaded",
                loaded,
                "apparmor_parser -r exits 0",
                out.summary(),
                None,
            );
            if !loaded {
                bail!("AppArmor profile not loaded: {}", out.summary());
            }
            Ok(Expect {
                probe_errno: libc::EACCES,
                label: APPARMOR_PROFILE,
                apparmor: true,
            })
        }
        other => bail!("unknown case {other}"),
    }
}

/// Forks a child into `cgroup` that execs `vm-guest bench-worker OP` (entering the AppArmor
/// profile at that exec when asked) and reads its report.
fn run_worker(cgroup: &Cgroup, op: &Op, apparmor: bool, quick: bool) -> Result<WorkerReport> {
    let program = cstring(EXEC_TARGET);
    let quick_flag = if quick { Some("--quick") } else { None };
    let args: Vec<CString> = ["vm-guest", "bench-worker", op.id]
        .into_iter()
        .chain(quick_flag)
        .map(|a| CString::new(a).expect("no NUL"))
        .collect();
    let child = spawn_in(Some(cgroup), |report| {
        if apparmor && let Err(e) = enter_profile_on_exec() {
            write_line(report, &format!("cannot enter the AppArmor profile: {e}"));
            return 125;
        }
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: the report pipe becomes the worker's stdout; argv is NULL-terminated and
        // outlives the call; execv only returns on failure.
        unsafe {
            libc::dup2(report, 1);
            libc::execv(program.as_ptr(), argv.as_ptr());
        }
        write_line(report, &format!("execv: {}", errno_name(errno())));
        127
    })?;
    let (lines, status) = child.finish(WORKER_TIMEOUT);
    let last = lines.last().map(String::as_str).unwrap_or("");
    if status != WaitStatus::Exited(0) {
        bail!("worker ended with {status:?}: {}", lines.join(" | "));
    }
    serde_json::from_str(last).with_context(|| format!("worker report {last:?}"))
}

/// Asks AppArmor to confine this process in the benchmark profile from its next exec on (what
/// `aa-exec -p` does).
fn enter_profile_on_exec() -> std::io::Result<()> {
    let cmd = format!("exec {APPARMOR_PROFILE}");
    std::fs::write("/proc/self/attr/apparmor/exec", &cmd)
        .or_else(|_| std::fs::write("/proc/self/attr/exec", &cmd))
}

/// `vm-guest bench-worker OP [--quick]`: runs one operation's loop, prints a
/// [`WorkerReport`].
pub fn worker(op_id: &str, quick: bool) -> u8 {
    let Some(op) = crate::bench::op(op_id) else {
        eprintln!("bench-worker: unknown operation {op_id}");
        return 2;
    };
    let scaled = op.quick();
    let op = if quick { &scaled } else { op };
    let samples = match op.id {
        "open" => time_open(op),
        "exec" => time_exec(op),
        "connect" => time_connect(op),
        _ => unreachable!("every operation has a loop"),
    };
    let samples = match samples {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-worker {op_id}: {e}");
            return 1;
        }
    };
    let report = WorkerReport {
        stats: Stats::from_samples(samples).expect("iterations > 0"),
        probe_errno: try_open(&cstring(DENIED)).err().unwrap_or(0),
        label: std::fs::read_to_string("/proc/self/attr/current")
            .map(|s| s.trim_end_matches(['\0', '\n']).to_owned())
            .unwrap_or_else(|e| format!("<{e}>")),
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("plain data serializes")
    );
    0
}

/// Runs `once` `op.warmup` times, then `op.iterations` times collecting the nanoseconds each
/// run measured.
fn timed(op: &Op, mut once: impl FnMut() -> Result<u64, String>) -> Result<Vec<u64>, String> {
    for _ in 0..op.warmup {
        once()?;
    }
    (0..op.iterations).map(|_| once()).collect()
}

fn time_open(op: &Op) -> Result<Vec<u64>, String> {
    let path = cstring(ALLOWED);
    timed(op, || {
        let t0 = monotonic_ns();
        // SAFETY: plain syscalls on a valid NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("open {ALLOWED}: {}", errno_name(errno())));
        }
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd) };
        Ok(monotonic_ns() - t0)
    })
}

fn time_exec(op: &Op) -> Result<Vec<u64>, String> {
    let program = cstring(EXEC_TARGET);
    let (arg0, arg1) = (c"vm-guest", c"exit");
    let argv = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    timed(op, || {
        let t0 = monotonic_ns();
        // SAFETY: the worker is single-threaded; the child only calls execve and _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno_name(errno())));
        }
        if pid == 0 {
            // SAFETY: argv and envp are NULL-terminated and live in the copied address space.
            unsafe {
                libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let took = monotonic_ns() - t0;
        if status != 0 {
            return Err(format!("{EXEC_TARGET} exit: wait status {status:#x}"));
        }
        Ok(took)
    })
}

fn time_connect(op: &Op) -> Result<Vec<u64>, String> {
    let listener = TcpListener::bind(("127.0.0.1", PORT)).map_err(|e| format!("bind: {e}"))?;
    let (_, addr, len) = sockaddr(([127, 0, 0, 1], PORT).into());
    // Closing with a zero linger time resets the connection, so no TIME_WAIT sockets pile up
    // over the loop.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    timed(op, || {
        // SAFETY: plain socket syscalls on fds this closure owns; addr/linger outlive them.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(format!("socket: {}", errno_name(errno())));
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            let t0 = monotonic_ns();
            let r = libc::connect(fd, (&addr as *const libc::sockaddr_storage).cast(), len);
            let took = monotonic_ns() - t0;
            if r != 0 {
                let e = errno();
                libc::close(fd);
                return Err(format!("connect: {}", errno_name(e)));
            }
            let accepted = listener.accept();
            libc::close(fd);
            drop(accepted.map_err(|e| format!("accept: {e}"))?);
            Ok(took)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realistic_profile_grows_by_the_requested_rules() {
        let base = realistic_body(0, 0, 0);
        let big = realistic_body(10_000, 1_000, 1_000);
        let count = |s: &str, needle: &str| s.matches(needle).count();
        assert_eq!(
            count(&big, "/srv/data/") - count(&base, "/srv/data/"),
            10_000
        );
        assert_eq!(
            count(&big, "/opt/tools/") - count(&base, "/opt/tools/"),
            1_000
        );
        assert_eq!(
            count(&big, "ports: [443]") - count(&base, "ports: [443]"),
            1_000
        );
        // The extra file rules are distinct paths.
        let paths: std::collections::BTreeSet<&str> =
            big.lines().filter(|l| l.contains("/srv/data/")).collect();
        assert_eq!(paths.len(), 10_000);
    }

    #[test]
    fn apparmor_profile_names_the_profile_and_allows_the_bench_file() {
        let p = apparmor_profile();
        assert!(p.starts_with(&format!("profile {APPARMOR_PROFILE} {{")));
        assert!(p.contains("/srv/bench/** r,"));
        assert!(!p.contains("bench-denied"));
    }
}
