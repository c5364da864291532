//! The systemd unit's `CapabilityBoundingSet=` is exactly what the daemon needs: started with
//! only those capabilities (as the unit starts it) the daemon loads, attaches, pins and
//! enforces; started without any one of them it refuses to start with exit code 3 and leaves
//! nothing attached. Checked on every kernel of the matrix, while the packaged-install VM
//! test runs the unit itself on one.

use std::path::Path;

use crate::guest::daemon::{
    CommandOutput, ENFORCERD, Launch, run_command, run_prepared, tail_lines,
};
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, bound_capabilities, cstring, try_open};
use crate::unit_capabilities::{UNIT_CAPABILITIES, number};
use anyhow::Result;

const SECRET: &str = "/srv/caps/secret";

pub fn the_units_capabilities_are_needed_and_enough(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(SECRET, "secret\n", 0o644)?;
    let cg = Cgroup::create("/caps")?;
    let dir = fixtures::profile_dir("caps")?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:\n    default: allow\n    rules:\n      - {{path: {SECRET}, access: [read], action: deny}}\n{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "caps.yaml",
        &fixtures::profile("caps", &cg.rel, "enforce", "deny", &body),
    )?;
    let all: Vec<u32> = UNIT_CAPABILITIES.iter().map(|c| number(c)).collect();

    for missing in UNIT_CAPABILITIES {
        let without: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&c| c != number(missing))
            .collect();
        let out = run_bounded(&dir, &without);
        // Generations pinned (the daemon creates the pin directory itself before loading).
        let pinned = std::fs::read_dir("/sys/fs/bpf/enforcerd").map_or(0, Iterator::count);
        ctx.check(
            &format!("refuses_to_start_without_{}", missing.to_lowercase()),
            out.code == Some(3) && pinned == 0,
            "exit 3 (cannot enforce), nothing pinned",
            format!(
                "{}; generations pinned: {pinned}\n{}",
                out.status,
                tail_lines(&out.stderr, 3)
            ),
            None,
        );
        // Leave nothing behind whatever happened.
        let _ = run_command(ENFORCERD, &["detach"]);
    }

    let how = Launch {
        bounding: Some(&all),
        ..Launch::default()
    };
    ctx.launch_daemon(&dir, &how, "starts_with_the_units_capabilities")?;
    let secret = cstring(SECRET);
    let run = ctx.op(Some(&cg), &format!("open {SECRET}"), || try_open(&secret));
    ctx.expect(
        "enforces_with_the_units_capabilities",
        &Outcome::Errno(libc::EPERM),
        &run,
    );
    Ok(())
}

/// `enforcerd run` with only `caps` in its bounding set, in the foreground: it either exits
/// at start-up or is stopped by SIGTERM once ready (`timeout`).
fn run_bounded(dir: &Path, caps: &[u32]) -> CommandOutput {
    let mut command = std::process::Command::new("/bin/timeout");
    command.args(["20", ENFORCERD, "run", "--allow-unsigned", "--profiles"]);
    command.arg(dir);
    bound_capabilities(&mut command, caps.to_vec());
    run_prepared(command, ENFORCERD)
}
