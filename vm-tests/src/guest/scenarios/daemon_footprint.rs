//! What the daemon costs with 100 profiles loaded, each for its own cgroup with realistic
//! rules: start-up to enforcing (READY=1), resident memory, and CPU while idle. The figures
//! are notes, not checks (timings under emulation are not assertions); the checks prove that
//! all 100 profiles are applied and enforced.

use std::time::Duration;

use crate::guest::daemon::status_json;
use crate::guest::fixtures::{self, json_str};
use crate::guest::out::Ctx;
use crate::guest::sys::{Outcome, cstring, try_open};
use anyhow::Result;

const PROFILES: usize = 100;
const SECRET: &str = "/srv/footprint/secret";
const IDLE: Duration = Duration::from_secs(10);

pub fn footprint_with_100_profiles(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(SECRET, "secret\n", 0o644)?;
    let dir = fixtures::profile_dir("footprint")?;
    let cgroups = fixtures::service_profiles(&dir, "/footprint", PROFILES)?;
    ctx.start_daemon(&dir, "daemon_ready_with_100_profiles")?;
    let ready = ctx
        .daemon
        .as_ref()
        .map(|d| d.ready_after)
        .unwrap_or_default();
    let pid = ctx.daemon_pid().unwrap_or(0);

    let status = status_json().map_err(anyhow::Error::msg)?;
    let applied = status["profiles"].as_array().map_or(0, Vec::len);
    ctx.check(
        "all_100_profiles_applied",
        applied == PROFILES && json_str(&status["last_reload"], "trigger") == "start",
        format!("{PROFILES} profiles in status"),
        format!("{applied}"),
        None,
    );
    let secret = cstring(SECRET);
    for i in [0, PROFILES / 2, PROFILES - 1] {
        let run = ctx.op(Some(&cgroups[i]), &format!("open {SECRET}"), || {
            try_open(&secret)
        });
        ctx.expect(
            &format!("profile_{i:03}_enforced"),
            &Outcome::Errno(libc::EPERM),
            &run,
        );
    }

    let ticks = |ctx: &Ctx| ctx.daemon.as_ref().and_then(|d| d.cpu_ticks()).unwrap_or(0);
    let before = ticks(ctx);
    std::thread::sleep(IDLE);
    let idle_ticks = ticks(ctx).saturating_sub(before);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ctx.note(&format!(
        "footprint (not a check): {PROFILES} profiles; READY=1 after {:.2} s; RSS {} KiB \
         (peak {} KiB); idle CPU {:.2}% over {} s ({idle_ticks} ticks)",
        ready.as_secs_f64(),
        fixtures::vm_kib(pid, "VmRSS:"),
        fixtures::vm_kib(pid, "VmHWM:"),
        100.0 * idle_ticks as f64 / hz / IDLE.as_secs_f64(),
        IDLE.as_secs()
    ));
    Ok(())
}
