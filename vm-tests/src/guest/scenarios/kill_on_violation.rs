//! onViolation: kill — the offender dies by SIGKILL and the action did not happen.

use crate::guest::fixtures::{self, BUSYBOX, CONNECT_ALLOW_ALL, DENIED_BUSYBOX};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Exec, Outcome, open_op, write_op};
use anyhow::Result;
use libc::{O_RDONLY, O_TRUNC, O_WRONLY};

const TARGET: &str = "/srv/kill/target.txt";
const TARGET_CONTENT: &str = "must survive\n";

pub fn offender_is_killed_and_action_never_happens(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    fixtures::write(TARGET, TARGET_CONTENT, 0o644)?;

    let cg = Cgroup::create("/kill_on_violation")?;
    let dir = fixtures::profile_dir("kill_on_violation")?;
    let body = format!(
        "  exec:
    default: allow
    deny: [{DENIED_BUSYBOX}]
  files:
    default: allow
    rules:
      - {{path: /srv/kill/, access: [write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "kill.yaml",
        &fixtures::profile("kill-on-violation", &cg.rel, "enforce", "kill", &body),
    )?;
    ctx.start_daemon(&dir, "daemon_ready")?;
    let g = Some(&cg);

    let r = ctx.op(
        g,
        &format!("open({TARGET}, O_WRONLY|O_TRUNC) + write"),
        || write_op(TARGET, O_WRONLY | O_TRUNC, b"tampered\n"),
    );
    ctx.expect("denied_write_killed_by_sigkill", &Outcome::KILLED, &r);
    let content = fixtures::read(TARGET);
    ctx.check(
        "file_unchanged_after_killed_write",
        content == TARGET_CONTENT,
        format!("{TARGET} contains {TARGET_CONTENT:?}"),
        format!("{TARGET} contains {content:?}"),
        None,
    );

    let r = ctx.exec(g, &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("denied_exec_killed_by_sigkill", &Outcome::KILLED, &r);

    let r = ctx.op(g, &format!("open({TARGET}, O_RDONLY)"), || {
        open_op(TARGET, O_RDONLY)
    });
    ctx.expect("allowed_read_not_killed", &Outcome::Ok, &r);
    let r = ctx.exec(g, &Exec::path(BUSYBOX, &["busybox", "true"]));
    ctx.expect("allowed_exec_not_killed", &Outcome::Exited(0), &r);

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}
