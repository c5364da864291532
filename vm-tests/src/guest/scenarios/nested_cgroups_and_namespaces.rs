//! A process cannot leave its profile through a child cgroup (created before or after the
//! daemon was ready), by moving itself into one, or by changing namespaces.

use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL, SECRET};
use crate::guest::out::{Ctx, say};
use crate::guest::sys::{self, Cgroup, Outcome, WaitStatus, errno, errno_name, open_op};
use anyhow::Result;
use std::time::Duration;

/// Exit status of a grandchild that did not land in a new pid namespace.
const NOT_PID_1: i32 = 240;

pub fn no_escape_through_child_cgroups_or_namespaces(ctx: &mut Ctx) -> Result<()> {
    fixtures::srv_tree()?;
    let cg = Cgroup::create("/nested")?;
    let dir = fixtures::profile_dir("nested")?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {SECRET}, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "nested.yaml",
        &fixtures::profile("nested", &cg.rel, "enforce", "deny", &body),
    )?;
    ctx.start_daemon(&dir, "daemon_ready")?;
    let eperm = Outcome::EPERM;
    let read_secret = || open_op(SECRET, libc::O_RDONLY);

    let r = ctx.op(Some(&cg), &format!("open({SECRET})"), read_secret);
    ctx.expect("governed_cgroup_denied", &eperm, &r);

    let child = cg.child("created-after-ready")?;
    let r = ctx.op(Some(&child), &format!("open({SECRET})"), read_secret);
    ctx.expect("child_cgroup_created_after_ready_governed", &eperm, &r);

    let deep = cg.child("a/b/c/d")?;
    let r = ctx.op(Some(&deep), &format!("open({SECRET})"), read_secret);
    ctx.expect("deeply_nested_cgroup_governed", &eperm, &r);

    let r = ctx.op(
        Some(&cg),
        &format!("unshare(CLONE_NEWNS|CLONE_NEWPID), fork, open({SECRET}) as pid 1"),
        || in_new_namespaces(libc::CLONE_NEWNS | libc::CLONE_NEWPID),
    );
    ctx.expect(
        "unshared_mount_and_pid_namespaces_stay_governed",
        &eperm,
        &r,
    );

    let r = ctx.op(
        Some(&cg),
        &format!("unshare(CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWNET), open({SECRET})"),
        || {
            // SAFETY: unshare affects only this child.
            if unsafe {
                libc::unshare(
                    libc::CLONE_NEWCGROUP
                        | libc::CLONE_NEWUTS
                        | libc::CLONE_NEWIPC
                        | libc::CLONE_NEWNET,
                )
            } != 0
            {
                say(&format!("  unshare failed: {}", errno_name(errno())));
                return Err(200);
            }
            read_secret()
        },
    );
    ctx.expect(
        "unshared_cgroup_uts_ipc_net_namespaces_stay_governed",
        &eperm,
        &r,
    );

    let escape = format!("{}/escape", cg.dir().display());
    let r = ctx.op(
        Some(&cg),
        &format!("mkdir {escape}, move self into it, open({SECRET})"),
        || {
            let esc = Cgroup::create(&format!("{}/escape", cg.rel)).map_err(|e| {
                say(&format!("  {e:#}"));
                201
            })?;
            sys::join_cgroup(&esc.procs()).map_err(|e| {
                say(&format!("  joining {}: {}", esc.rel, errno_name(e)));
                202
            })?;
            read_secret()
        },
    );
    ctx.expect("moving_to_new_child_cgroup_stays_governed", &eperm, &r);

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

/// In the calling child: unshare, fork (so the pid namespace applies), and in the grandchild,
/// which must be pid 1, open the secret. Returns the grandchild's result.
fn in_new_namespaces(flags: i32) -> Result<(), i32> {
    // SAFETY: unshare and fork in a single-threaded child; the grandchild only makes syscalls
    // and _exits.
    unsafe {
        if libc::unshare(flags) != 0 {
            say(&format!("  unshare failed: {}", errno_name(errno())));
            return Err(200);
        }
        let pid = libc::fork();
        if pid < 0 {
            say(&format!(
                "  fork after unshare failed: {}",
                errno_name(errno())
            ));
            return Err(201);
        }
        if pid == 0 {
            if libc::getpid() != 1 {
                say(&format!("  grandchild is pid {}, not 1", libc::getpid()));
                libc::_exit(NOT_PID_1);
            }
            let code = match open_op(SECRET, libc::O_RDONLY) {
                Ok(()) => 0,
                Err(e) => e,
            };
            libc::_exit(code);
        }
        match sys::wait_child(pid, Duration::from_secs(20)) {
            WaitStatus::Exited(0) => Ok(()),
            WaitStatus::Exited(c) => Err(c),
            WaitStatus::Signaled(s) => Err(128 + s),
            WaitStatus::Harness(m) => {
                say(&format!("  grandchild: {m}"));
                Err(202)
            }
        }
    }
}
