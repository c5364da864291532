//! `file_open` remembers allowed opens per dentry (lsm-ebpf `file_verdicts`) so that a
//! re-open skips path resolution. Each check first has a governed process open a file while
//! it is allowed (so the verdict is remembered), then changes what the file's path is, or
//! which rules apply, in a way the remembered entry must not survive, and re-opens it.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::guest::daemon::status_json;
use crate::guest::fixtures;
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, cstring, try_open};

const OPEN: &str = "/srv/remembered/open";
const CLOSED: &str = "/srv/remembered/closed";
const EXACT: &str = "/srv/remembered/exact.txt";

fn body(open_action: &str) -> String {
    format!(
        "  exec:\n    default: allow\n  files:\n    default: deny\n    rules:\n\
         \x20     - {{path: {OPEN}/, access: [read], action: {open_action}}}\n\
         \x20     - {{path: {EXACT}, access: [read], action: allow}}\n"
    )
}

pub fn remembered_verdicts_follow_paths_and_rules(ctx: &mut Ctx) -> Result<()> {
    let _ = std::fs::remove_dir_all("/srv/remembered");
    for f in ["dir/f", "g", "h", "k"] {
        fixtures::write(&format!("{OPEN}/{f}"), "content\n", 0o644)?;
    }
    std::fs::create_dir_all(CLOSED)?;
    let cg = Cgroup::create("/remembered")?;
    let dir = fixtures::profile_dir("remembered")?;
    let write_profile = |serial, action: &str| {
        fixtures::write_profile(
            &dir,
            "p.yaml",
            &fixtures::profile_with_serial(
                "remembered",
                serial,
                &cg.rel,
                "enforce",
                "deny",
                &body(action),
            ),
        )
    };
    write_profile(1, "allow")?;
    ctx.start_daemon(&dir, "daemon_ready")?;

    // Each target is opened twice while allowed: the second open is answered from memory.
    let allowed_twice = |ctx: &mut Ctx, check: &str, path: &str| {
        for _ in 0..2 {
            let run = ctx.op(Some(&cg), &format!("open {path}"), || {
                try_open(&cstring(path))
            });
            if !ctx.expect(check, &Outcome::Ok, &run) {
                return false;
            }
        }
        true
    };

    // A directory rename moves the file without touching its dentry, parent or name.
    allowed_twice(ctx, "file_in_open_dir_readable", &format!("{OPEN}/dir/f"))
        .then_some(())
        .context("setup open failed")?;
    std::fs::rename(format!("{OPEN}/dir"), format!("{CLOSED}/dir"))?;
    let run = ctx.op(Some(&cg), "open after its directory moved", || {
        try_open(&cstring(format!("{CLOSED}/dir/f")))
    });
    ctx.expect(
        "directory_renamed_out_of_allowed_tree_denied",
        &Outcome::EPERM,
        &run,
    );

    // A file renamed out of the allowed tree.
    allowed_twice(ctx, "file_readable_before_rename", &format!("{OPEN}/g"));
    std::fs::rename(format!("{OPEN}/g"), format!("{CLOSED}/g"))?;
    let run = ctx.op(Some(&cg), "open after rename", || {
        try_open(&cstring(format!("{CLOSED}/g")))
    });
    ctx.expect(
        "file_renamed_out_of_allowed_tree_denied",
        &Outcome::EPERM,
        &run,
    );

    // An unlinked file's path reads "... (deleted)", which the exact rule does not match.
    fixtures::write(EXACT, "exact\n", 0o644)?;
    allowed_twice(ctx, "exact_file_readable", EXACT);
    let run = ctx.op(Some(&cg), "open, unlink, re-open via /proc/self/fd", || {
        // SAFETY: plain syscalls on valid NUL-terminated paths.
        let fd = unsafe { libc::open(cstring(EXACT).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(150);
        }
        // SAFETY: as above.
        if unsafe { libc::unlink(cstring(EXACT).as_ptr()) } != 0 {
            return Err(151);
        }
        try_open(&cstring(format!("/proc/self/fd/{fd}")))
    });
    ctx.expect("unlinked_file_reopen_denied", &Outcome::EPERM, &run);

    // The same dentry seen from another root resolves to another path ("/h").
    allowed_twice(
        ctx,
        "file_readable_from_the_real_root",
        &format!("{OPEN}/h"),
    );
    let run = ctx.op(Some(&cg), "chroot into the allowed tree, open /h", || {
        // SAFETY: chroot in the forked child only.
        if unsafe { libc::chroot(cstring(OPEN).as_ptr()) } != 0 {
            return Err(152);
        }
        try_open(c"/h")
    });
    ctx.expect("same_file_under_another_root_denied", &Outcome::EPERM, &run);

    // A reload that turns the allow into a deny.
    allowed_twice(ctx, "file_readable_before_reload", &format!("{OPEN}/k"));
    write_profile(2, "deny")?;
    let reloaded = ctx.daemon.as_ref().is_some_and(|d| d.sighup())
        && fixtures::wait_until(Duration::from_secs(30), || {
            status_json().is_ok_and(|s| {
                s["profiles"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == "remembered" && p["serial"].as_u64() == Some(2))
                })
            })
        })
        .is_some();
    ctx.check(
        "reload_applied",
        reloaded,
        "serial 2 in status",
        format!("{reloaded}"),
        None,
    );
    let run = ctx.op(Some(&cg), "open after the reload", || {
        try_open(&cstring(format!("{OPEN}/k")))
    });
    ctx.expect("file_denied_after_reload", &Outcome::EPERM, &run);
    Ok(())
}
