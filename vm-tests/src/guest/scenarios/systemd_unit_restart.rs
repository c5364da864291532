//! A systemd unit's cgroup is governed from the instant it is created, before any process can
//! enter it: the profile names the unit, which is not running when the daemon starts; the
//! unit's cgroup is then created and removed again and again (a restarting unit) and every
//! first action in each new cgroup is already denied. The kernel binds the cgroup at
//! `cgroup_mkdir`; the daemon's view (`status`) follows by inotify.

use std::time::{Duration, Instant};

use crate::guest::daemon::status_json;
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, op_in, open_op};
use anyhow::Result;
use libc::O_RDONLY;
use serde_json::Value;

const UNIT: &str = "enforcerd-demo.service";
const UNIT_CGROUP: &str = "/system.slice/enforcerd-demo.service";
const SECRET: &str = "/srv/unit/secret";
const RESTARTS: usize = 30;

fn unit_profile(serial: u64, denied: &[&str]) -> String {
    let rules: String = denied
        .iter()
        .map(|p| format!("      - {{path: {p}, access: [read], action: deny}}\n"))
        .collect();
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:\n    default: allow\n    rules:\n{rules}{CONNECT_ALLOW_ALL}"
    );
    fixtures::profile_with_serial("demo-unit", serial, "PLACEHOLDER", "enforce", "deny", &body)
        .replace(
            "    cgroup: PLACEHOLDER",
            &format!("    systemdUnit: {UNIT}"),
        )
}

pub fn a_restarted_unit_is_governed_from_its_cgroups_creation(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(SECRET, "unit secret\n", 0o644)?;
    fixtures::write("/srv/unit/other", "other\n", 0o644)?;
    let unit = Cgroup {
        rel: UNIT_CGROUP.into(),
    };
    let _ = std::fs::remove_dir(unit.dir());
    std::fs::create_dir_all(unit.dir().parent().expect("parent"))?;
    let dir = fixtures::profile_dir("systemd_unit_restart")?;
    fixtures::write_profile(&dir, "unit.yaml", &unit_profile(1, &[SECRET]))?;
    ctx.start_daemon(&dir, "daemon_ready_before_the_unit_runs")?;

    // The unit restarts RESTARTS times; each time the first open in the fresh cgroup is denied.
    let mut outcomes = Vec::new();
    for _ in 0..RESTARTS {
        std::fs::create_dir(unit.dir())?;
        let r = op_in(Some(&unit), || open_op(SECRET, O_RDONLY));
        outcomes.push(r.outcome);
        std::fs::remove_dir(unit.dir())?;
    }
    let denied = outcomes.iter().filter(|o| **o == Outcome::EPERM).count();
    ctx.check(
        "first_open_in_each_new_unit_cgroup_denied",
        denied == RESTARTS,
        format!("EPERM in all {RESTARTS} fresh cgroups"),
        format!("EPERM in {denied}; outcomes {outcomes:?}"),
        None,
    );

    // The daemon's view follows: the running unit's cgroup appears in status, and goes.
    std::fs::create_dir(unit.dir())?;
    let created = Instant::now();
    let seen = wait_status(|s| unit_cgroups(s) == [UNIT_CGROUP]);
    let after = created.elapsed();
    ctx.check(
        "status_lists_the_running_units_cgroup",
        seen,
        format!("status shows profile demo-unit on {UNIT_CGROUP}"),
        format!("after {} ms: {seen}", after.as_millis()),
        None,
    );

    // A new version applies to the running unit at once; a rolled-out rule is gone.
    fixtures::write_profile(&dir, "unit.yaml", &unit_profile(2, &["/srv/unit/other"]))?;
    let replaced = wait_status(|s| {
        s["profiles"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["serial"] == 2))
    });
    let other = op_in(Some(&unit), || open_op("/srv/unit/other", O_RDONLY));
    let secret = op_in(Some(&unit), || open_op(SECRET, O_RDONLY));
    ctx.check(
        "new_version_governs_the_running_unit",
        replaced && other.outcome == Outcome::EPERM && secret.outcome == Outcome::Ok,
        "serial 2 applied: /srv/unit/other denied, the old rule gone",
        format!(
            "applied {replaced}, other {}, secret {}",
            other.outcome, secret.outcome
        ),
        None,
    );
    std::fs::remove_dir(unit.dir())?;
    let gone = wait_status(|s| unit_cgroups(s).is_empty());
    ctx.check(
        "status_drops_the_stopped_units_cgroup",
        gone,
        "no cgroup listed once the unit's cgroup is removed",
        format!("{gone}"),
        None,
    );

    // Restarted after the new version: governed by it from creation.
    std::fs::create_dir(unit.dir())?;
    let r = op_in(Some(&unit), || open_op("/srv/unit/other", O_RDONLY));
    ctx.expect(
        "restart_after_replacement_governed_by_new_version",
        &Outcome::EPERM,
        &r,
    );
    std::fs::remove_dir(unit.dir())?;

    // A cgroup nobody expects stays ungoverned.
    let stranger = Cgroup::create("/system.slice/unrelated.service")?;
    let r = op_in(Some(&stranger), || open_op("/srv/unit/other", O_RDONLY));
    ctx.expect("unexpected_cgroup_not_governed", &Outcome::Ok, &r);
    let _ = std::fs::remove_dir(stranger.dir());

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

fn unit_cgroups(status: &Value) -> Vec<String> {
    fixtures::profile_strings(status, "demo-unit", "cgroups")
}

/// Polls `enforcerd status --json` for up to 10 s.
fn wait_status(pred: impl Fn(&Value) -> bool) -> bool {
    fixtures::wait_until(Duration::from_secs(10), || {
        status_json().is_ok_and(|s| pred(&s))
    })
    .is_some()
}
