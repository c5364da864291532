//! The attack suite: one scenario per technique a workload could use to get around its
//! profile. Each check asserts what the kernel does today (errno, exit status, whether a
//! datagram or connection arrived), never a log line. A technique the programs stop is also
//! run once in `mode: audit`, where it must succeed and be reported. `known_gap_*` checks
//! assert today's behaviour of a documented gap, so they fail the day the gap is closed and
//! SECURITY.md must be updated with them. `by_design_*` checks assert behaviour that is
//! intended and explained in SECURITY.md (what an ungoverned administrator does is never
//! second-guessed), so that a change to it is noticed.

use crate::guest::daemon::{DECISION_TIMEOUT, ENFORCERD};
use crate::guest::fixtures::{
    self, ALLOWED_DIR, BUSYBOX, CONNECT_ALLOW_ALL, DENIED_BUSYBOX, EXEC_ALLOW_ALL, FILES_ALLOW_ALL,
};
use crate::guest::out::Ctx;
use crate::guest::sys::{
    Cgroup, Exec, Outcome, Run, WaitStatus, cstring, errno, errno_name, sockaddr, spawn_in,
    write_line,
};
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::RawFd;
use std::time::Duration;

const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// A copy of the (dynamically linked) daemon binary at a path no allowlist names.
const DENIED_DYNAMIC: &str = "/opt/denied/dynamic-binary";
/// The same copy in the allowed directory.
const ALLOWED_DYNAMIC: &str = "/opt/allowed/dynamic-binary";
/// What ld.so exits with when it cannot load the program it was asked to run.
const LOADER_FAILED: i32 = 127;
/// The C library the initramfs carries for the daemon binary.
const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
/// A copy of it in the allowed directory: an executable mapping the exec rules allow.
const ALLOWED_LIB: &str = "/opt/allowed/libc-copy.so";

/// Governed cgroups of one scenario: `/attack_<name>` (enforce) and `/attack_<name>_audit`
/// (the same rules in `mode: audit`).
struct Cgroups {
    enforce: Cgroup,
    audit: Cgroup,
}

/// Writes one profile for the enforce cgroup and one for the audit cgroup, both with `body`,
/// and starts the daemon on them.
fn start(ctx: &mut Ctx, name: &str, body: &str) -> Result<Cgroups> {
    let enforce = Cgroup::create(&format!("/attack_{name}"))?;
    let audit = Cgroup::create(&format!("/attack_{name}_audit"))?;
    let dir = fixtures::profile_dir(&format!("attack_{name}"))?;
    let pname = name.replace('_', "-");
    fixtures::write_profile(
        &dir,
        "enforce.yaml",
        &fixtures::profile(&pname, &enforce.rel, "enforce", "deny", body),
    )?;
    fixtures::write_profile(
        &dir,
        "audit.yaml",
        &fixtures::profile(&format!("{pname}-audit"), &audit.rel, "audit", "deny", body),
    )?;
    // Every decision on its own line: the audit checks look for each attempt's pid.
    ctx.start_daemon_args(&dir, &["--aggregate-window", "0"], "daemon_ready")?;
    Ok(Cgroups { enforce, audit })
}

/// Checks that the daemon reported an audit decision of `hook` whose target `target` accepts,
/// for the process `run` (when given).
fn audited(
    ctx: &mut Ctx,
    check: &str,
    run: Option<&Run>,
    hook: &str,
    what: &str,
    target: impl Fn(&str) -> bool,
) {
    audited_where(ctx, check, run, hook, what, |v| {
        v["target"].as_str().is_some_and(&target)
    });
}

/// `audited`, with any test on the decision line (`what` describes it).
fn audited_where(
    ctx: &mut Ctx,
    check: &str,
    run: Option<&Run>,
    hook: &str,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) {
    reported(ctx, check, run, hook, "audit", what, accept);
}

/// Checks that the daemon reported a `decision` of `hook` that `accept` accepts, for the
/// process `run` (when given).
fn reported(
    ctx: &mut Ctx,
    check: &str,
    run: Option<&Run>,
    hook: &str,
    decision: &str,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) {
    let pid = run.map(|r| i64::from(r.pid));
    let mut expected =
        format!("a decision line with hook={hook:?} decision={decision:?} target {what}");
    if let Some(p) = pid {
        expected.push_str(&format!(" pid={p}"));
    }
    let Some(d) = ctx.daemon.as_mut() else {
        ctx.check(check, false, expected, "no daemon", None);
        return;
    };
    let matches = |v: &Value| {
        v["hook"] == hook
            && v["decision"] == decision
            && accept(v)
            && pid.is_none_or(|p| v["pid"].as_i64() == Some(p))
    };
    if let Some(v) = d.wait_decision(DECISION_TIMEOUT, matches) {
        ctx.check(check, true, expected, v.to_string(), None);
        return;
    }
    let lines: Vec<String> = d
        .decisions()
        .into_iter()
        .filter(|v| v["hook"] == hook)
        .map(|v| v.to_string())
        .collect();
    let got = if lines.is_empty() {
        format!("no {hook} decision line")
    } else {
        lines.join("\n")
    };
    ctx.check(check, false, expected, got, None);
}

fn args(v: &[&str]) -> (Vec<std::ffi::CString>, Vec<*const libc::c_char>) {
    let owned: Vec<std::ffi::CString> = v.iter().map(cstring).collect();
    let mut ptrs: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    (owned, ptrs)
}

// ---- 1. exec through the dynamic loader ----

pub fn attack_exec_via_dynamic_loader(ctx: &mut Ctx) -> Result<()> {
    std::fs::create_dir_all("/opt/denied")?;
    std::fs::copy(ENFORCERD, DENIED_DYNAMIC).context("copying the daemon binary")?;
    std::fs::create_dir_all(ALLOWED_DIR)?;
    std::fs::copy(ENFORCERD, ALLOWED_DYNAMIC).context("copying the daemon binary")?;
    std::fs::copy(LIBC, ALLOWED_LIB).with_context(|| format!("copying {LIBC}"))?;
    let loader_real = std::fs::canonicalize(LOADER)
        .with_context(|| format!("resolving {LOADER}"))?
        .to_string_lossy()
        .into_owned();
    ctx.note(&format!("{LOADER} resolves to {loader_real}"));

    // Loader not allowed: running it as a program is an exec of the loader.
    let body = format!(
        "  exec:
    default: deny
    allow: [{BUSYBOX}, {ALLOWED_DIR}/]
{FILES_ALLOW_ALL}{CONNECT_ALLOW_ALL}"
    );
    let cg = start(ctx, "exec_via_dynamic_loader", &body)?;
    let via_loader = Exec::path(LOADER, &["ld.so", DENIED_DYNAMIC, "--version"]);

    let r = ctx.exec(
        Some(&cg.enforce),
        &Exec::path(DENIED_DYNAMIC, &["x", "--version"]),
    );
    ctx.expect("denied_dynamic_binary_denied", &Outcome::EPERM, &r);
    // The kernel maps an allowed program's ELF interpreter without an exec check.
    let r = ctx.exec(
        Some(&cg.enforce),
        &Exec::path(ALLOWED_DYNAMIC, &["x", "--version"]),
    );
    ctx.expect(
        "allowed_dynamic_binary_runs_with_loader_not_allowed",
        &Outcome::Exited(0),
        &r,
    );
    let r = ctx.exec(Some(&cg.enforce), &via_loader);
    ctx.expect("loader_not_allowed_exec_denied", &Outcome::EPERM, &r);

    let r = ctx.exec(Some(&cg.audit), &via_loader);
    ctx.expect("audit_loader_exec_runs", &Outcome::Exited(0), &r);
    audited(
        ctx,
        "audit_loader_exec_reported",
        Some(&r),
        "exec",
        LOADER,
        |t| t == LOADER || t == loader_real,
    );
    ctx.stop_daemon("daemon_stops_on_sigterm");

    // Loader allowed: it maps the denied binary itself, without an exec.
    let body = format!(
        "  exec:
    default: deny
    allow: [{BUSYBOX}, {ALLOWED_DIR}/, {LOADER}, {loader_real}]
{FILES_ALLOW_ALL}{CONNECT_ALLOW_ALL}"
    );
    let cg = start(ctx, "exec_via_allowed_dynamic_loader", &body)?;
    let r = ctx.exec(
        Some(&cg.enforce),
        &Exec::path(DENIED_DYNAMIC, &["x", "--version"]),
    );
    ctx.expect(
        "denied_dynamic_binary_still_denied_directly",
        &Outcome::EPERM,
        &r,
    );
    // ld.so maps the program itself: that first executable mapping is decided as its exec.
    // The mmap fails with EPERM; ld.so reports it and exits 127.
    let r = ctx.exec(Some(&cg.enforce), &via_loader);
    ctx.expect(
        "allowed_loader_running_denied_binary_fails",
        &Outcome::Exited(LOADER_FAILED),
        &r,
    );
    reported(
        ctx,
        "allowed_loader_running_denied_binary_reported_as_exec_deny",
        Some(&r),
        "exec",
        "deny",
        DENIED_DYNAMIC,
        |v| v["target"] == DENIED_DYNAMIC,
    );
    // A library the exec rules allow, preloaded: ld.so maps the program before any preload,
    // so the program's mapping is still the one decided.
    let r = ctx.exec(
        Some(&cg.enforce),
        &Exec::path(
            LOADER,
            &[
                "ld.so",
                "--preload",
                ALLOWED_LIB,
                DENIED_DYNAMIC,
                "--version",
            ],
        ),
    );
    ctx.expect(
        "allowed_loader_with_allowed_preload_running_denied_binary_fails",
        &Outcome::Exited(LOADER_FAILED),
        &r,
    );
    let r = ctx.exec(
        Some(&cg.enforce),
        &Exec::path(LOADER, &["ld.so", ALLOWED_DYNAMIC, "--version"]),
    );
    ctx.expect(
        "allowed_loader_running_allowed_binary_runs",
        &Outcome::Exited(0),
        &r,
    );
    let r = ctx.exec(
        Some(&cg.enforce),
        &Exec::path(ALLOWED_DYNAMIC, &["x", "--version"]),
    );
    ctx.expect(
        "allowed_dynamic_binary_runs_with_loader_allowed",
        &Outcome::Exited(0),
        &r,
    );
    let r = ctx.exec(Some(&cg.audit), &via_loader);
    ctx.expect(
        "audit_allowed_loader_runs_denied_binary",
        &Outcome::Exited(0),
        &r,
    );
    audited(
        ctx,
        "audit_allowed_loader_running_denied_binary_reported",
        Some(&r),
        "exec",
        DENIED_DYNAMIC,
        |t| t == DENIED_DYNAMIC,
    );
    ctx.stop_daemon("daemon_with_loader_allowed_stops_on_sigterm");
    Ok(())
}

// ---- 2. exec of an fd: memfd and execveat(AT_EMPTY_PATH) ----

pub fn attack_exec_from_fd(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    let payload = std::fs::read(BUSYBOX).context("reading busybox")?;
    let body = format!(
        "  exec:
    default: deny
    allow: [{BUSYBOX}, {ALLOWED_DIR}/]
{FILES_ALLOW_ALL}{CONNECT_ALLOW_ALL}"
    );
    let cg = start(ctx, "exec_from_fd", &body)?;

    let memfd_exec = || -> Result<(), i32> {
        let (_a, argv) = args(&["busybox", "true"]);
        let (_e, env) = args(&["PATH=/bin"]);
        // SAFETY: plain syscalls on live buffers; on success fexecve does not return.
        unsafe {
            let fd = libc::memfd_create(c"payload".as_ptr(), 0);
            if fd < 0 {
                return Err(errno());
            }
            let mut done = 0;
            while done < payload.len() {
                let n = libc::write(fd, payload[done..].as_ptr().cast(), payload.len() - done);
                if n <= 0 {
                    return Err(errno());
                }
                done += n as usize;
            }
            libc::fexecve(fd, argv.as_ptr(), env.as_ptr());
            Err(errno())
        }
    };
    let execveat_empty = || -> Result<(), i32> {
        let (_a, argv) = args(&["busybox", "true"]);
        let (_e, env) = args(&["PATH=/bin"]);
        let path = cstring(DENIED_BUSYBOX);
        // SAFETY: plain syscalls on live buffers; on success execveat does not return.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return Err(errno());
            }
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.as_ptr(),
                env.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            Err(errno())
        }
    };

    let what_memfd = "memfd_create + write(busybox) + fexecve";
    let what_at = format!("execveat(open({DENIED_BUSYBOX}), \"\", AT_EMPTY_PATH)");
    let r = ctx.op(Some(&cg.enforce), what_memfd, memfd_exec);
    ctx.expect("memfd_fexecve_denied", &Outcome::EPERM, &r);
    let r = ctx.op(Some(&cg.enforce), &what_at, execveat_empty);
    ctx.expect(
        "execveat_empty_path_of_denied_binary_denied",
        &Outcome::EPERM,
        &r,
    );

    // In audit mode both run (busybox true exits 0) and are reported.
    let r = ctx.op(Some(&cg.audit), what_memfd, memfd_exec);
    ctx.expect("audit_memfd_fexecve_runs", &Outcome::Ok, &r);
    audited(
        ctx,
        "audit_memfd_fexecve_reported",
        Some(&r),
        "exec",
        "/memfd:payload*",
        |t| t.starts_with("/memfd:payload"),
    );
    let r = ctx.op(Some(&cg.audit), &what_at, execveat_empty);
    ctx.expect("audit_execveat_empty_path_runs", &Outcome::Ok, &r);
    audited(
        ctx,
        "audit_execveat_empty_path_reported",
        Some(&r),
        "exec",
        DENIED_BUSYBOX,
        |t| t == DENIED_BUSYBOX,
    );
    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

// ---- 3. links to a denied binary in an allowed directory ----

const HARDLINK: &str = "/opt/allowed/hardlink-to-denied";
const SYMLINK: &str = "/opt/allowed/symlink-to-denied";

/// `link(2)`: the errno if it failed.
fn link_op(from: &str, to: &str) -> Result<(), i32> {
    std::fs::hard_link(from, to).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// `rename(2)`: the errno if it failed.
fn rename_op(from: &str, to: &str) -> Result<(), i32> {
    std::fs::rename(from, to).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// In a mount namespace of its own (mounts private), bind-mounts `source` on `target`, then
/// runs `op`. Exit codes 151-153 say which setup step failed.
fn in_private_bind(
    source: &str,
    target: &str,
    op: impl FnOnce() -> Result<(), i32>,
) -> Result<(), i32> {
    in_namespaces_bind(libc::CLONE_NEWNS, source, target, op)
}

/// `in_private_bind` as an unprivileged user (uid/gid 65534) in a user namespace of its own,
/// as any unprivileged workload can where the kernel allows unprivileged user namespaces (all
/// three test kernels do by default). Exit code 154: dropping privileges failed.
fn in_private_bind_unprivileged(
    source: &str,
    target: &str,
    op: impl FnOnce() -> Result<(), i32>,
) -> Result<(), i32> {
    // SAFETY: credential syscalls in a forked child.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(65534) == 0
            && libc::setuid(65534) == 0
    };
    if !dropped {
        return Err(154);
    }
    in_namespaces_bind(libc::CLONE_NEWUSER | libc::CLONE_NEWNS, source, target, op)
}

fn in_namespaces_bind(
    namespaces: i32,
    source: &str,
    target: &str,
    op: impl FnOnce() -> Result<(), i32>,
) -> Result<(), i32> {
    let (src, dst, root) = (cstring(source), cstring(target), cstring("/"));
    // SAFETY: unshare(2) and mount(2) with valid NUL-terminated paths, in a forked child.
    unsafe {
        if libc::unshare(namespaces) != 0 {
            return Err(151);
        }
        let private = libc::MS_REC | libc::MS_PRIVATE;
        let (none, no_data) = (std::ptr::null(), std::ptr::null());
        if libc::mount(none, root.as_ptr(), none, private, no_data) != 0 {
            return Err(152);
        }
        let bind = libc::MS_BIND | libc::MS_REC;
        if libc::mount(src.as_ptr(), dst.as_ptr(), none, bind, no_data) != 0 {
            return Err(153);
        }
    }
    op()
}

/// Checks that `path` exists or not, as `expected` says.
fn check_exists(ctx: &mut Ctx, check: &str, path: &str, expected: bool) {
    let exists = std::path::Path::new(path).exists();
    ctx.check(
        check,
        exists == expected,
        format!(
            "{path} {}",
            if expected { "exists" } else { "does not exist" }
        ),
        format!("{path} exists: {exists}"),
        None,
    );
}

/// An audit decision with this `reason` and target.
fn audited_alias(ctx: &mut Ctx, check: &str, run: &Run, hook: &str, reason: &str, target: &str) {
    audited_where(
        ctx,
        check,
        Some(run),
        hook,
        &format!("{target} with reason {reason:?}"),
        |v| v["target"] == target && v["reason"] == reason,
    );
}

pub fn attack_exec_via_link_in_allowed_dir(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    std::fs::create_dir_all(ALLOWED_DIR)?;
    let _ = std::fs::remove_file(HARDLINK);
    std::fs::hard_link(DENIED_BUSYBOX, HARDLINK)
        .with_context(|| format!("hard link {HARDLINK} -> {DENIED_BUSYBOX}"))?;
    fixtures::symlink(DENIED_BUSYBOX, SYMLINK)?;
    let body = format!(
        "  exec:
    default: deny
    allow: [{BUSYBOX}, {ALLOWED_DIR}/]
{FILES_ALLOW_ALL}{CONNECT_ALLOW_ALL}"
    );
    let cg = start(ctx, "exec_via_link", &body)?;
    let g = Some(&cg.enforce);

    let r = ctx.exec(g, &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("denied_binary_denied", &Outcome::EPERM, &r);
    let r = ctx.exec(g, &Exec::path(SYMLINK, &["busybox", "true"]));
    ctx.expect("symlink_in_allowed_dir_denied", &Outcome::EPERM, &r);
    // Root outside the workload linked it there (see the top of this function): root put a
    // program into the allowed directory, as a copy would.
    let r = ctx.exec(g, &Exec::path(HARDLINK, &["busybox", "true"]));
    ctx.expect(
        "by_design_hard_link_by_host_root_in_allowed_dir_runs",
        &Outcome::Exited(0),
        &r,
    );

    // The workload itself links the denied binary into the allowed directory: refused
    // (the new name would allow an exec the binary's own name denies), and nothing is made.
    let workload_link = format!("{ALLOWED_DIR}/workload-link-to-denied");
    let _ = std::fs::remove_file(&workload_link);
    let what = format!("link({DENIED_BUSYBOX}, {workload_link})");
    let r = ctx.op(g, &what, || link_op(DENIED_BUSYBOX, &workload_link));
    ctx.expect(
        "workload_hard_link_of_denied_binary_into_allowed_dir_denied",
        &Outcome::EPERM,
        &r,
    );
    check_exists(ctx, "workload_hard_link_not_made", &workload_link, false);
    // Linking an allowed binary to another allowed name adds nothing: allowed.
    let allowed_link = format!("{ALLOWED_DIR}/workload-link-to-allowed");
    let _ = std::fs::remove_file(&allowed_link);
    let r = ctx.op(g, &format!("link({BUSYBOX}, {allowed_link})"), || {
        link_op(BUSYBOX, &allowed_link)
    });
    ctx.expect(
        "workload_hard_link_of_allowed_binary_allowed",
        &Outcome::Ok,
        &r,
    );

    let r = ctx.op(Some(&cg.audit), &what, || {
        link_op(DENIED_BUSYBOX, &workload_link)
    });
    ctx.expect("audit_workload_hard_link_made", &Outcome::Ok, &r);
    audited_alias(
        ctx,
        "audit_workload_hard_link_reported",
        &r,
        "exec",
        "link",
        DENIED_BUSYBOX,
    );
    let _ = std::fs::remove_file(&workload_link);
    let _ = std::fs::remove_file(&allowed_link);

    // The denied binary bind-mounted over an allowed one, by the workload in a mount
    // namespace of its own: decided by its name on the root mount too.
    let bind_target = format!("{ALLOWED_DIR}/bind-target");
    fixtures::write(&bind_target, "#!/bin/busybox true\n", 0o755)?;
    let what = format!("unshare(CLONE_NEWNS), bind {DENIED_BUSYBOX} on {bind_target}, execv");
    let exec_bound = |target: &str| -> Result<(), i32> {
        let path = cstring(target);
        let argv = [cstring("busybox"), cstring("true")];
        let argv = [argv[0].as_ptr(), argv[1].as_ptr(), std::ptr::null()];
        // SAFETY: execv(2) with NUL-terminated strings and a NULL-terminated argv.
        unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
        Err(errno())
    };
    let r = ctx.op(g, &what, || {
        in_private_bind(DENIED_BUSYBOX, &bind_target, || exec_bound(&bind_target))
    });
    ctx.expect(
        "workload_bind_mount_of_denied_binary_on_allowed_path_denied",
        &Outcome::EPERM,
        &r,
    );
    let r = ctx.op(Some(&cg.audit), &what, || {
        in_private_bind(DENIED_BUSYBOX, &bind_target, || exec_bound(&bind_target))
    });
    ctx.expect("audit_bind_mounted_binary_runs", &Outcome::Ok, &r);
    audited_alias(
        ctx,
        "audit_bind_mounted_binary_reported",
        &r,
        "exec",
        "mount-alias",
        DENIED_BUSYBOX,
    );
    let r = ctx.op(
        g,
        &format!("unshare(CLONE_NEWNS), bind {BUSYBOX} on {bind_target}, execv"),
        || in_private_bind(BUSYBOX, &bind_target, || exec_bound(&bind_target)),
    );
    ctx.expect(
        "allowed_binary_bind_mounted_on_allowed_path_runs",
        &Outcome::Ok,
        &r,
    );

    let r = ctx.exec(Some(&cg.audit), &Exec::path(SYMLINK, &["busybox", "true"]));
    ctx.expect("audit_symlink_runs", &Outcome::Exited(0), &r);
    audited(
        ctx,
        "audit_symlink_reported",
        Some(&r),
        "exec",
        DENIED_BUSYBOX,
        |t| t == DENIED_BUSYBOX,
    );
    ctx.stop_daemon("daemon_stops_on_sigterm");
    let _ = std::fs::remove_file(HARDLINK);
    let _ = std::fs::remove_file(SYMLINK);
    Ok(())
}

// ---- 4. files: rename, bind mount, /proc/self/fd re-opens ----

const DENIED_TREE: &str = "/srv/attack/denied";
const ALLOWED_TREE: &str = "/srv/attack/allowed";
const DENIED_FILE: &str = "/srv/attack/denied/secret";
/// Not created: a rule names a subtree below it.
const FUTURE_TREE: &str = "/srv/attack/future";
const CONTENT: &str = "attack target\n";

/// `open(path, O_RDONLY)` and `read`: the errno of whichever failed.
fn read_op(path: &str) -> Result<(), i32> {
    let c = cstring(path);
    // SAFETY: plain syscalls on a valid path and a stack buffer.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let mut buf = [0u8; 64];
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        let e = errno();
        libc::close(fd);
        if n < 0 { Err(e) } else { Ok(()) }
    }
}

/// Opens `path` with `O_PATH` (no `file_open` check), then re-opens it for reading through
/// `/proc/self/fd/N`. Exit status 150 means the `O_PATH` open itself failed.
fn o_path_reopen(path: &str) -> Result<(), i32> {
    let c = cstring(path);
    // SAFETY: plain syscalls on a valid path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(150);
    }
    read_op(&format!("/proc/self/fd/{fd}"))
}

pub fn attack_file_aliases(ctx: &mut Ctx) -> Result<()> {
    let _ = std::fs::remove_dir_all("/srv/attack");
    fixtures::write(DENIED_FILE, CONTENT, 0o644)?;
    let renamed_src = format!("{DENIED_TREE}/renamed");
    let renamed_dst = format!("{ALLOWED_TREE}/renamed");
    let bind_src = format!("{DENIED_TREE}/bound");
    let bind_dst = format!("{ALLOWED_TREE}/bind-target");
    fixtures::write(&renamed_src, CONTENT, 0o644)?;
    fixtures::write(&bind_src, CONTENT, 0o644)?;
    fixtures::write(&bind_dst, "harmless\n", 0o644)?;

    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {DENIED_TREE}/, access: [read, write], action: deny}}
      - {{path: {FUTURE_TREE}/private/, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    let cg = start(ctx, "file_aliases", &body)?;
    let g = Some(&cg.enforce);

    let r = ctx.op(g, &format!("open+read({DENIED_FILE})"), || {
        read_op(DENIED_FILE)
    });
    ctx.expect("denied_file_read_denied", &Outcome::EPERM, &r);
    let r = ctx.op(g, &format!("open+read({renamed_src})"), || {
        read_op(&renamed_src)
    });
    ctx.expect("file_to_rename_denied_before", &Outcome::EPERM, &r);

    // The workload itself renames or links a denied file, or a directory of the denied
    // tree, into the allowed tree: refused, nothing moves.
    let moved_src = format!("{DENIED_TREE}/moved");
    let moved_dst = format!("{ALLOWED_TREE}/moved");
    let dir_src = format!("{DENIED_TREE}/subdir");
    let dir_dst = format!("{ALLOWED_TREE}/subdir");
    let link_dst = format!("{ALLOWED_TREE}/link-to-secret");
    fixtures::write(&moved_src, CONTENT, 0o644)?;
    fixtures::write(&format!("{dir_src}/inner"), CONTENT, 0o644)?;
    let rename_what = format!("rename({moved_src}, {moved_dst})");
    let r = ctx.op(g, &rename_what, || rename_op(&moved_src, &moved_dst));
    ctx.expect(
        "workload_rename_of_denied_file_into_allowed_tree_denied",
        &Outcome::EPERM,
        &r,
    );
    check_exists(ctx, "denied_file_not_moved", &moved_src, true);
    let r = ctx.op(g, &format!("rename({dir_src}, {dir_dst})"), || {
        rename_op(&dir_src, &dir_dst)
    });
    ctx.expect(
        "workload_rename_of_denied_directory_into_allowed_tree_denied",
        &Outcome::EPERM,
        &r,
    );
    check_exists(ctx, "denied_directory_not_moved", &dir_src, true);
    let elsewhere = "/srv/attack/elsewhere";
    let r = ctx.op(g, &format!("rename({DENIED_TREE}, {elsewhere})"), || {
        rename_op(DENIED_TREE, elsewhere)
    });
    ctx.expect(
        "workload_rename_of_the_denied_tree_itself_denied",
        &Outcome::EPERM,
        &r,
    );
    check_exists(ctx, "denied_tree_not_moved", DENIED_TREE, true);
    let link_what = format!("link({DENIED_FILE}, {link_dst})");
    let r = ctx.op(g, &link_what, || link_op(DENIED_FILE, &link_dst));
    ctx.expect(
        "workload_hard_link_of_denied_file_into_allowed_tree_denied",
        &Outcome::EPERM,
        &r,
    );
    check_exists(ctx, "denied_file_link_not_made", &link_dst, false);
    // Renames that add nothing stay allowed: within the allowed tree, and from it into the
    // denied one.
    let harmless_a = format!("{ALLOWED_TREE}/harmless-a");
    let harmless_b = format!("{ALLOWED_TREE}/harmless-b");
    fixtures::write(&harmless_a, CONTENT, 0o644)?;
    let r = ctx.op(g, &format!("rename({harmless_a}, {harmless_b})"), || {
        rename_op(&harmless_a, &harmless_b)
    });
    ctx.expect(
        "workload_rename_within_allowed_tree_allowed",
        &Outcome::Ok,
        &r,
    );
    let into_denied = format!("{DENIED_TREE}/harmless");
    let r = ctx.op(g, &format!("rename({harmless_b}, {into_denied})"), || {
        rename_op(&harmless_b, &into_denied)
    });
    ctx.expect("workload_rename_into_denied_tree_allowed", &Outcome::Ok, &r);
    // Directories with rules below them stay where they are, and none is moved to a name
    // with rules below it: the rules would then cover other files.
    let r = ctx.op(g, "rename(/srv/attack, /srv/attack-moved)", || {
        rename_op("/srv/attack", "/srv/attack-moved")
    });
    ctx.expect(
        "workload_rename_of_a_directory_above_the_denied_tree_denied",
        &Outcome::EPERM,
        &r,
    );
    check_exists(ctx, "directory_above_not_moved", DENIED_TREE, true);
    let decoy = format!("{ALLOWED_TREE}/decoy");
    fixtures::write(&format!("{decoy}/private/file"), CONTENT, 0o644)?;
    let r = ctx.op(g, &format!("rename({decoy}, {FUTURE_TREE})"), || {
        rename_op(&decoy, FUTURE_TREE)
    });
    ctx.expect(
        "workload_rename_of_a_directory_onto_a_name_with_rules_below_denied",
        &Outcome::EPERM,
        &r,
    );
    let decoy_renamed = format!("{ALLOWED_TREE}/decoy-renamed");
    let r = ctx.op(g, &format!("rename({decoy}, {decoy_renamed})"), || {
        rename_op(&decoy, &decoy_renamed)
    });
    ctx.expect(
        "workload_rename_of_a_directory_without_rules_allowed",
        &Outcome::Ok,
        &r,
    );

    let a = Some(&cg.audit);
    let r = ctx.op(a, &rename_what, || rename_op(&moved_src, &moved_dst));
    ctx.expect("audit_workload_rename_made", &Outcome::Ok, &r);
    audited_alias(
        ctx,
        "audit_workload_rename_reported",
        &r,
        "file",
        "rename",
        &moved_src,
    );
    let r = ctx.op(a, &link_what, || link_op(DENIED_FILE, &link_dst));
    ctx.expect("audit_workload_hard_link_made", &Outcome::Ok, &r);
    audited_alias(
        ctx,
        "audit_workload_hard_link_reported",
        &r,
        "file",
        "link",
        DENIED_FILE,
    );

    // Rename by root outside the governed cgroup, then read from inside: root put the file
    // into the allowed tree, as a copy would.
    std::fs::rename(&renamed_src, &renamed_dst).context("renaming into the allowed tree")?;
    let r = ctx.op(g, &format!("open+read({renamed_dst})"), || {
        read_op(&renamed_dst)
    });
    ctx.expect(
        "by_design_file_renamed_by_host_root_into_allowed_tree_readable",
        &Outcome::Ok,
        &r,
    );

    // Bind mount of the denied file over an allowed path, by root: the file is still the
    // denied one under its name on the root mount.
    let (src, dst) = (cstring(&bind_src), cstring(&bind_dst));
    // SAFETY: mount(2) with valid NUL-terminated paths.
    let m = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if m != 0 {
        bail!(
            "bind mount {bind_src} on {bind_dst}: {}",
            errno_name(errno())
        );
    }
    let bound_what = format!("open+read({bind_dst}) [bind mount of {bind_src}]");
    let r = ctx.op(g, &bound_what, || read_op(&bind_dst));
    let audit_r = ctx.op(Some(&cg.audit), &bound_what, || read_op(&bind_dst));
    // SAFETY: umount2 on a valid path.
    unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    ctx.expect(
        "denied_file_bind_mounted_on_allowed_path_denied",
        &Outcome::EPERM,
        &r,
    );
    ctx.expect("audit_bind_mounted_file_readable", &Outcome::Ok, &audit_r);
    audited_alias(
        ctx,
        "audit_bind_mounted_file_reported",
        &audit_r,
        "file",
        "mount-alias",
        &bind_src,
    );
    // The workload itself, in a mount namespace of its own (as an unprivileged workload can
    // in a user namespace).
    let what = format!("unshare(CLONE_NEWNS), bind {DENIED_FILE} on {bind_dst}, open+read");
    let r = ctx.op(g, &what, || {
        in_private_bind(DENIED_FILE, &bind_dst, || read_op(&bind_dst))
    });
    ctx.expect(
        "workload_bind_mount_of_denied_file_on_allowed_path_denied",
        &Outcome::EPERM,
        &r,
    );
    let what = format!(
        "as uid 65534: unshare(CLONE_NEWUSER|CLONE_NEWNS), bind {DENIED_FILE} on {bind_dst}, \
         open+read"
    );
    let r = ctx.op(g, &what, || {
        in_private_bind_unprivileged(DENIED_FILE, &bind_dst, || read_op(&bind_dst))
    });
    ctx.expect(
        "unprivileged_workload_bind_mount_in_user_namespace_denied",
        &Outcome::EPERM,
        &r,
    );
    let r = ctx.op(Some(&cg.audit), &what, || {
        in_private_bind_unprivileged(DENIED_FILE, &bind_dst, || read_op(&bind_dst))
    });
    ctx.expect("audit_unprivileged_bind_mount_readable", &Outcome::Ok, &r);
    audited_alias(
        ctx,
        "audit_unprivileged_bind_mount_reported",
        &r,
        "file",
        "mount-alias",
        DENIED_FILE,
    );
    // The same filesystem mounted a second time is another mount of it too: a bind of the
    // whole tree.
    let mnt = "/srv/attack-mnt";
    std::fs::create_dir_all(mnt)?;
    let r = ctx.op(
        g,
        &format!("unshare(CLONE_NEWNS), bind / on {mnt}, open+read({mnt}{DENIED_FILE})"),
        || in_private_bind("/", mnt, || read_op(&format!("{mnt}{DENIED_FILE}"))),
    );
    ctx.expect(
        "workload_second_mount_of_root_filesystem_denied",
        &Outcome::EPERM,
        &r,
    );
    // Allowed files stay readable through such a mount.
    let r = ctx.op(
        g,
        &format!("unshare(CLONE_NEWNS), bind / on {mnt}, open+read({mnt}{bind_dst})"),
        || in_private_bind("/", mnt, || read_op(&format!("{mnt}{bind_dst}"))),
    );
    ctx.expect(
        "allowed_file_through_second_mount_readable",
        &Outcome::Ok,
        &r,
    );

    // An fd opened by the ungoverned runner and inherited: re-opening it through
    // /proc/self/fd/N is a new open of the denied file.
    let c = cstring(DENIED_FILE);
    // SAFETY: open(2) on a valid path; the fd is closed below.
    let inherited: RawFd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    if inherited < 0 {
        bail!(
            "opening {DENIED_FILE} in the runner: {}",
            errno_name(errno())
        );
    }
    let proc_fd = format!("/proc/self/fd/{inherited}");
    let what = format!("open+read({proc_fd}) [inherited fd of {DENIED_FILE}]");
    let r = ctx.op(g, &what, || read_op(&proc_fd));
    ctx.expect(
        "proc_self_fd_reopen_of_inherited_fd_denied",
        &Outcome::EPERM,
        &r,
    );
    let what_opath = format!("open({DENIED_FILE}, O_PATH) + open+read(/proc/self/fd/N)");
    let r = ctx.op(g, &what_opath, || o_path_reopen(DENIED_FILE));
    ctx.expect(
        "o_path_then_proc_self_fd_reopen_denied",
        &Outcome::EPERM,
        &r,
    );

    let a = Some(&cg.audit);
    let r = ctx.op(a, &what, || read_op(&proc_fd));
    ctx.expect("audit_proc_self_fd_reopen_succeeds", &Outcome::Ok, &r);
    audited(
        ctx,
        "audit_proc_self_fd_reopen_reported",
        Some(&r),
        "file",
        DENIED_FILE,
        |t| t == DENIED_FILE,
    );
    let r = ctx.op(a, &what_opath, || o_path_reopen(DENIED_FILE));
    ctx.expect("audit_o_path_reopen_succeeds", &Outcome::Ok, &r);
    audited(
        ctx,
        "audit_o_path_reopen_reported",
        Some(&r),
        "file",
        DENIED_FILE,
        |t| t == DENIED_FILE,
    );
    // SAFETY: closing the runner's own fd.
    unsafe { libc::close(inherited) };

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

// ---- 5. network: IPv4-mapped IPv6, sendto/sendmsg without connect, TCP Fast Open ----

const MAPPED_PORT: u16 = 9192;
const UDP_PORT: u16 = 9193;

/// `socket()` + `connect()` with a 5 s send timeout.
fn connect_to(addr: SocketAddr, ty: i32) -> Result<(), i32> {
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket syscalls on a zero-initialised sockaddr of the right length.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let r = libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len);
        let e = errno();
        libc::close(fd);
        if r != 0 { Err(e) } else { Ok(()) }
    }
}

/// How a datagram is given its destination on an unconnected UDP socket.
#[derive(Clone, Copy)]
enum Addressing {
    /// `sendto(addr)`.
    To,
    /// `sendmsg` with `msg_name = addr`.
    Msg,
    /// `sendto` with the address's family set to AF_UNSPEC: an AF_INET socket's
    /// udp_sendmsg uses it as an IPv4 address anyway.
    Unspec,
}

/// Sends `data` to `addr` on a new unconnected socket of type `ty` with `flags`.
fn send_to(addr: SocketAddr, ty: i32, how: Addressing, flags: i32, data: &[u8]) -> Result<(), i32> {
    let (family, mut storage, len) = sockaddr(addr);
    if let Addressing::Unspec = how {
        storage.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
    }
    let name = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: plain socket syscalls on a zero-initialised sockaddr of the right length and a
    // live buffer.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let n = match how {
            Addressing::To | Addressing::Unspec => {
                libc::sendto(fd, data.as_ptr().cast(), data.len(), flags, name, len)
            }
            Addressing::Msg => {
                let mut iov = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = name.cast();
                msg.msg_namelen = len;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                libc::sendmsg(fd, &msg, flags)
            }
        };
        let e = errno();
        libc::close(fd);
        if n < 0 { Err(e) } else { Ok(()) }
    }
}

/// `sendto()` of a datagram on an unconnected UDP socket.
fn sendto(addr: SocketAddr, how: Addressing, data: &[u8]) -> Result<(), i32> {
    send_to(addr, libc::SOCK_DGRAM, how, 0, data)
}

/// TCP Fast Open: `sendto(MSG_FASTOPEN)` on an unconnected TCP socket connects (and sends)
/// without calling connect(2).
fn fastopen(addr: SocketAddr) -> Result<(), i32> {
    send_to(
        addr,
        libc::SOCK_STREAM,
        Addressing::To,
        libc::MSG_FASTOPEN,
        b"fast open",
    )
}

/// Whether a datagram arrives at `sock` within 2 s.
fn received(sock: &UdpSocket) -> Option<String> {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 256];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| format!("{:?} from {from}", String::from_utf8_lossy(&buf[..n])))
}

/// Whether a connection is waiting on `l`.
fn accepted(l: &TcpListener) -> bool {
    let _ = l.set_nonblocking(true);
    l.accept().is_ok()
}

pub fn attack_connect_bypass(ctx: &mut Ctx) -> Result<()> {
    let tcp = TcpListener::bind(("0.0.0.0", MAPPED_PORT))
        .with_context(|| format!("listening on 0.0.0.0:{MAPPED_PORT}"))?;
    let udp = UdpSocket::bind(("127.0.0.1", UDP_PORT))
        .with_context(|| format!("binding udp 127.0.0.1:{UDP_PORT}"))?;
    let body = format!(
        "{EXEC_ALLOW_ALL}{FILES_ALLOW_ALL}  network:
    connect:
      default: deny
      allow:
        - {{cidr: 127.0.0.0/8, ports: [8080], protocol: tcp}}
"
    );
    let cg = start(ctx, "connect_bypass", &body)?;
    let g = Some(&cg.enforce);
    let v4: SocketAddr = format!("127.0.0.1:{MAPPED_PORT}").parse()?;
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{MAPPED_PORT}").parse()?;
    let udp_dst: SocketAddr = format!("127.0.0.1:{UDP_PORT}").parse()?;

    let r = ctx.op(g, &format!("connect(tcp {v4})"), || {
        connect_to(v4, libc::SOCK_STREAM)
    });
    ctx.expect("denied_ipv4_connect_denied", &Outcome::EPERM, &r);
    let r = ctx.op(g, &format!("connect(tcp {mapped}) on AF_INET6"), || {
        connect_to(mapped, libc::SOCK_STREAM)
    });
    ctx.expect("ipv4_mapped_ipv6_connect_denied", &Outcome::EPERM, &r);
    let arrived = accepted(&tcp);
    ctx.check(
        "ipv4_mapped_ipv6_connection_never_arrived",
        !arrived,
        "no connection on the listener",
        if arrived { "a connection" } else { "none" },
        None,
    );

    let r = ctx.op(g, &format!("connect(udp {udp_dst})"), || {
        connect_to(udp_dst, libc::SOCK_DGRAM)
    });
    ctx.expect("udp_connect_to_denied_address_denied", &Outcome::EPERM, &r);
    // Destinations given to sendto/sendmsg are decided like connect's.
    for (check, how, what) in [
        (
            "udp_sendto_without_connect_denied",
            Addressing::To,
            "sendto",
        ),
        (
            "udp_sendmsg_without_connect_denied",
            Addressing::Msg,
            "sendmsg",
        ),
        (
            "udp_sendto_af_unspec_address_denied",
            Addressing::Unspec,
            "sendto [sa_family AF_UNSPEC]",
        ),
    ] {
        let r = ctx.op(g, &format!("{what}(udp {udp_dst}) unconnected"), || {
            sendto(udp_dst, how, b"exfiltrated")
        });
        ctx.expect(check, &Outcome::EPERM, &r);
    }
    let got = received(&udp);
    ctx.check(
        "udp_sendto_without_connect_never_arrived",
        got.is_none(),
        "no datagram at the listener within 2 s",
        got.unwrap_or_else(|| "none".into()),
        None,
    );
    let r = ctx.op(g, &format!("sendto(tcp {v4}, MSG_FASTOPEN)"), || {
        fastopen(v4)
    });
    ctx.expect(
        "tcp_fastopen_sendto_to_denied_address_denied",
        &Outcome::EPERM,
        &r,
    );
    let arrived = accepted(&tcp);
    ctx.check(
        "tcp_fastopen_connection_never_arrived",
        !arrived,
        "no connection on the listener",
        if arrived { "a connection" } else { "none" },
        None,
    );

    let a = Some(&cg.audit);
    let r = ctx.op(a, &format!("sendto(udp {udp_dst}) unconnected"), || {
        sendto(udp_dst, Addressing::To, b"audited")
    });
    ctx.expect(
        "audit_udp_sendto_without_connect_succeeds",
        &Outcome::Ok,
        &r,
    );
    let got = received(&udp);
    ctx.check(
        "audit_udp_sendto_without_connect_arrives",
        got.is_some(),
        "the datagram arrives at the listener",
        got.unwrap_or_else(|| "nothing within 2 s".into()),
        None,
    );
    let want = udp_dst.to_string();
    audited(
        ctx,
        "audit_udp_sendto_without_connect_reported",
        Some(&r),
        "connect",
        &want,
        |t| t == want,
    );
    let r = ctx.op(a, &format!("sendto(tcp {v4}, MSG_FASTOPEN)"), || {
        fastopen(v4)
    });
    ctx.expect("audit_tcp_fastopen_sendto_succeeds", &Outcome::Ok, &r);
    let want = v4.to_string();
    audited(
        ctx,
        "audit_tcp_fastopen_sendto_reported",
        Some(&r),
        "connect",
        &want,
        |t| t == want,
    );
    let arrived = accepted(&tcp);
    ctx.check(
        "audit_tcp_fastopen_connection_arrives",
        arrived,
        "a connection on the listener",
        if arrived { "a connection" } else { "none" },
        None,
    );

    let r = ctx.op(Some(&cg.audit), &format!("connect(tcp {mapped})"), || {
        connect_to(mapped, libc::SOCK_STREAM)
    });
    ctx.expect("audit_ipv4_mapped_ipv6_connect_succeeds", &Outcome::Ok, &r);
    let want = [v4.to_string(), mapped.to_string()];
    audited(
        ctx,
        "audit_ipv4_mapped_ipv6_connect_reported",
        Some(&r),
        "connect",
        &format!("{v4} or {mapped}"),
        |t| want.iter().any(|w| w == t),
    );
    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

// ---- 6. io_uring openat, connect and sendmsg ----

const IO_URING_PORT: u16 = 9194;

/// In a child in `cgroup`: one io_uring operation. The child reports `setup <errno>` when
/// io_uring cannot be set up, else `res <cqe res>`.
fn io_uring_in(cgroup: &Cgroup, op: IoUringOp) -> Result<String> {
    let child = spawn_in(Some(cgroup), move |wr| {
        let mut ring = match io_uring::IoUring::new(4) {
            Ok(r) => r,
            Err(e) => {
                write_line(wr, &format!("setup {}", e.raw_os_error().unwrap_or(0)));
                return 0;
            }
        };
        let path = cstring(DENIED_FILE);
        let (family, mut storage, len) = sockaddr(op_addr());
        let ty = match op {
            IoUringOp::SendMsg => libc::SOCK_DGRAM,
            _ => libc::SOCK_STREAM,
        };
        // SAFETY: a plain socket(2); closed when the child exits.
        let sock = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
        let data = *b"exfiltrated";
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let entry = match op {
            IoUringOp::OpenAt => {
                io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
                    .flags(libc::O_RDONLY | libc::O_CLOEXEC)
                    .build()
            }
            IoUringOp::Connect => io_uring::opcode::Connect::new(
                io_uring::types::Fd(sock),
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
            .build(),
            IoUringOp::SendMsg => {
                io_uring::opcode::SendMsg::new(io_uring::types::Fd(sock), &msg).build()
            }
        };
        // SAFETY: the path, address and message the entry points to outlive the submission.
        if unsafe { ring.submission().push(&entry) }.is_err() {
            write_line(wr, "push failed");
            return 1;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            write_line(wr, &format!("submit {}", e.raw_os_error().unwrap_or(0)));
            return 1;
        }
        match ring.completion().next() {
            Some(cqe) => write_line(wr, &format!("res {}", cqe.result())),
            None => write_line(wr, "no completion"),
        }
        0
    })?;
    let (lines, status) = child.finish(Duration::from_secs(20));
    if status != WaitStatus::Exited(0) {
        bail!("io_uring child: {status:?} {lines:?}");
    }
    Ok(lines.join(" "))
}

#[derive(Debug, Clone, Copy)]
enum IoUringOp {
    OpenAt,
    Connect,
    /// A UDP datagram with a destination address, on an unconnected socket.
    SendMsg,
}

fn op_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], IO_URING_PORT))
}

pub fn attack_io_uring(ctx: &mut Ctx) -> Result<()> {
    let _ = std::fs::remove_dir_all("/srv/attack");
    fixtures::write(DENIED_FILE, CONTENT, 0o644)?;
    let _tcp =
        TcpListener::bind(op_addr()).with_context(|| format!("listening on {}", op_addr()))?;
    let udp = UdpSocket::bind(op_addr()).with_context(|| format!("binding udp {}", op_addr()))?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {DENIED_TREE}/, access: [read, write], action: deny}}
  network:
    connect:
      default: deny
      allow:
        - {{cidr: 127.0.0.0/8, ports: [8080], protocol: tcp}}
"
    );
    let cg = start(ctx, "io_uring", &body)?;
    let eperm = format!("res {}", -libc::EPERM);

    for (op, name, what) in [
        (IoUringOp::OpenAt, "openat", DENIED_FILE.to_owned()),
        (IoUringOp::Connect, "connect", op_addr().to_string()),
        (IoUringOp::SendMsg, "sendmsg", format!("udp {}", op_addr())),
    ] {
        let got = io_uring_in(&cg.enforce, op)?;
        ctx.note(&format!("io_uring {name} {what} [enforce] -> {got}"));
        if let Some(e) = got.strip_prefix("setup ") {
            let e: i32 = e.parse().unwrap_or(0);
            // Unavailable io_uring cannot be used to get around the programs.
            ctx.check(
                &format!("io_uring_{name}_unavailable_on_this_kernel"),
                true,
                format!("cqe res {} (or io_uring unavailable)", -libc::EPERM),
                format!("io_uring_setup failed: {}", errno_name(e)),
                None,
            );
            continue;
        }
        ctx.check(
            &format!("io_uring_{name}_of_denied_target_denied"),
            got == eperm,
            format!("{eperm} (EPERM)"),
            got,
            None,
        );
        if let IoUringOp::SendMsg = op {
            let got = received(&udp);
            ctx.check(
                "io_uring_sendmsg_datagram_never_arrived",
                got.is_none(),
                "no datagram at the listener within 2 s",
                got.unwrap_or_else(|| "none".into()),
                None,
            );
        }
        let got = io_uring_in(&cg.audit, op)?;
        ctx.note(&format!("io_uring {name} {what} [audit] -> {got}"));
        let ok = got
            .strip_prefix("res ")
            .and_then(|n| n.parse::<i32>().ok())
            .is_some_and(|n| n >= 0);
        ctx.check(
            &format!("audit_io_uring_{name}_succeeds"),
            ok,
            "res >= 0",
            got,
            None,
        );
        // The connect and the datagram go to the same address: the protocol tells them apart.
        let (hook, target, protocol) = match op {
            IoUringOp::OpenAt => ("file", DENIED_FILE.to_owned(), None),
            IoUringOp::Connect => ("connect", op_addr().to_string(), Some("tcp")),
            IoUringOp::SendMsg => ("connect", op_addr().to_string(), Some("udp")),
        };
        audited_where(
            ctx,
            &format!("audit_io_uring_{name}_reported"),
            None,
            hook,
            &format!("{target} protocol={protocol:?}"),
            |v| v["target"] == target.as_str() && protocol.is_none_or(|p| v["protocol"] == p),
        );
    }
    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}
