//! exec default deny: the decision follows the file the kernel opened for execution, whatever
//! path string the caller used, and covers script interpreters.

use crate::guest::fixtures::{
    self, ALLOWED_DIR, BUSYBOX, CONNECT_ALLOW_ALL, DENIED_BUSYBOX, FILES_ALLOW_ALL,
};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Exec, How, Outcome};
use anyhow::Result;

const GOOD_SCRIPT: &str = "/opt/allowed/good.sh";
const BAD_INTERP_SCRIPT: &str = "/opt/allowed/denied-interpreter.sh";
const LINK_TO_DENIED: &str = "/opt/allowed/link-to-denied";

pub fn exec_is_decided_on_the_file_the_kernel_runs(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    fixtures::write(GOOD_SCRIPT, "#!/bin/sh\nexit 0\n", 0o755)?;
    fixtures::write(
        BAD_INTERP_SCRIPT,
        &format!("#!{DENIED_BUSYBOX} sh\nexit 0\n"),
        0o755,
    )?;
    fixtures::symlink(DENIED_BUSYBOX, LINK_TO_DENIED)?;

    let cg = Cgroup::create("/exec_allowlist")?;
    let free = Cgroup::create("/exec_allowlist_ungoverned")?;
    let dir = fixtures::profile_dir("exec_allowlist")?;
    // /bin/sh, /bin/true, ... are symlinks to /bin/busybox: allowing the real file allows them.
    let body = format!(
        "  exec:
    default: deny
    allow: [{BUSYBOX}, {ALLOWED_DIR}/]
{FILES_ALLOW_ALL}{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "exec-allowlist.yaml",
        &fixtures::profile("exec-allowlist", &cg.rel, "enforce", "deny", &body),
    )?;
    ctx.start_daemon(&dir, "daemon_ready")?;

    let ok = Outcome::Exited(0);
    let eperm = Outcome::EPERM;
    let g = Some(&cg);

    let r = ctx.exec(g, &Exec::path(BUSYBOX, &["busybox", "true"]));
    ctx.expect("allowed_binary_runs", &ok, &r);
    let r = ctx.exec(g, &Exec::path("/bin/true", &["true"]));
    ctx.expect("allowed_binary_runs_via_applet_symlink", &ok, &r);

    let r = ctx.exec(g, &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("unlisted_binary_denied", &eperm, &r);

    let r = ctx.exec(g, &Exec::path(GOOD_SCRIPT, &[GOOD_SCRIPT]));
    ctx.expect("script_with_allowed_interpreter_runs", &ok, &r);
    let r = ctx.exec(g, &Exec::path(BAD_INTERP_SCRIPT, &[BAD_INTERP_SCRIPT]));
    ctx.expect("script_with_denied_interpreter_denied", &eperm, &r);

    let r = ctx.exec(
        g,
        &Exec::path("./busybox", &["busybox", "true"]).in_dir("/opt/denied"),
    );
    ctx.expect("relative_path_denied", &eperm, &r);
    let r = ctx.exec(
        g,
        &Exec::path("/opt/allowed/../denied/busybox", &["busybox", "true"]),
    );
    ctx.expect("dotdot_path_denied", &eperm, &r);
    let r = ctx.exec(g, &Exec::path(LINK_TO_DENIED, &["busybox", "true"]));
    ctx.expect("symlink_in_allowed_dir_to_denied_binary_denied", &eperm, &r);
    let r = ctx.exec(
        g,
        &Exec::how(How::Fexecve(DENIED_BUSYBOX.into()), &["busybox", "true"]),
    );
    ctx.expect("fexecve_of_denied_binary_denied", &eperm, &r);
    let r = ctx.exec(
        g,
        &Exec::how(How::ProcSelfFd(DENIED_BUSYBOX.into()), &["busybox", "true"]),
    );
    ctx.expect("proc_self_fd_of_denied_binary_denied", &eperm, &r);
    let r = ctx.exec(
        g,
        &Exec::how(
            How::Execveat {
                dir: "/opt/denied".into(),
                name: "busybox".into(),
            },
            &["busybox", "true"],
        ),
    );
    ctx.expect("execveat_of_denied_binary_denied", &eperm, &r);
    // Running the dynamic loader as a program is an exec of the loader itself.
    let r = ctx.exec(
        g,
        &Exec::path(
            "/lib64/ld-linux-x86-64.so.2",
            &["ld.so", DENIED_BUSYBOX, "true"],
        ),
    );
    ctx.expect("dynamic_loader_as_program_denied", &eperm, &r);

    let f = Some(&free);
    let r = ctx.exec(f, &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("denied_binary_runs_from_ungoverned_cgroup", &ok, &r);
    let r = ctx.exec(f, &Exec::path(BAD_INTERP_SCRIPT, &[BAD_INTERP_SCRIPT]));
    ctx.expect("denied_interpreter_runs_from_ungoverned_cgroup", &ok, &r);
    let r = ctx.exec(
        f,
        &Exec::path("./busybox", &["busybox", "true"]).in_dir("/opt/denied"),
    );
    ctx.expect("relative_path_runs_from_ungoverned_cgroup", &ok, &r);

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}
