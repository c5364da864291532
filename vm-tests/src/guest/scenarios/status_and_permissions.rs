//! status_and_permissions: `enforcerd status --json` (over the root-only control socket) shows
//! the running daemon, its attached programs, each profile with its identity (name, serial,
//! sha256 of its bytes), mode, governed cgroups and decision counters, and the last reload.
//! A non-root caller gets a permission error, not the status.

use crate::guest::daemon::{ENFORCERD, run_command, run_command_as, status_json};
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL, json_str};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, open_op, uname_release};
use anyhow::{Context as _, Result};
use serde_json::Value;
use std::time::{Duration, Instant};

const NAME: &str = "status-demo";
const SERIAL: u64 = 7;
const DENIED: &str = "/srv/status/denied";
const ALLOWED: &str = "/srv/status/allowed";
/// Denied opens the scenario causes.
const DENIALS: u64 = 3;
const NOBODY: u32 = 65534;

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

pub fn status_shows_what_is_enforced_to_root_only(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(DENIED, "denied\n", 0o644)?;
    fixtures::write(ALLOWED, "allowed\n", 0o644)?;
    let key = fixtures::signing_key("signer")?;
    let trusted = fixtures::trusted_dir("status_and_permissions", &[&key])?;
    let cg = Cgroup::create("/status_and_permissions")?;
    let dir = fixtures::profile_dir("status_and_permissions")?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {DENIED}, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    let file = fixtures::write_profile(
        &dir,
        "status-demo.yaml",
        &fixtures::profile_with_serial(NAME, SERIAL, &cg.rel, "enforce", "deny", &body),
    )?;
    fixtures::sign(&key, &[&file])?;
    let file_str = file.to_str().context("path")?.to_owned();
    let sha = run_command(fixtures::BUSYBOX, &["sha256sum", &file_str]);
    let file_sha = sha
        .stdout
        .split_whitespace()
        .next()
        .map(|h| format!("sha256:{h}"))
        .unwrap_or_default();

    ctx.start_daemon_trusting(&dir, &trusted, "daemon_ready")?;
    let daemon_pid = ctx.daemon.as_ref().and_then(|d| d.pid()).unwrap_or(0);
    let mut outcomes = Vec::new();
    for _ in 0..DENIALS {
        let r = ctx.op(Some(&cg), &format!("open({DENIED}, O_RDONLY)"), || {
            open_op(DENIED, libc::O_RDONLY)
        });
        outcomes.push(r.outcome.to_string());
    }
    ctx.check(
        "denied_opens_denied",
        outcomes.iter().all(|o| *o == Outcome::EPERM.to_string()),
        format!("{DENIALS} x {}", Outcome::EPERM),
        outcomes.join(", "),
        None,
    );
    let r = ctx.op(Some(&cg), &format!("open({ALLOWED}, O_RDONLY)"), || {
        open_op(ALLOWED, libc::O_RDONLY)
    });
    ctx.expect("allowed_open_allowed", &Outcome::Ok, &r);
    // The counters follow the decision lines; wait until the daemon has printed them.
    let deadline = Instant::now() + crate::guest::daemon::DECISION_TIMEOUT;
    loop {
        let seen = ctx.daemon.as_ref().map_or(0, |d| {
            d.decisions()
                .iter()
                .filter(|v| json_str(v, "profile") == NAME && json_str(v, "decision") == "deny")
                .count() as u64
        });
        if seen >= DENIALS || Instant::now() >= deadline {
            break;
        }
        ctx.relay();
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = run_command(ENFORCERD, &["status", "--json"]);
    let status = status_json();
    ctx.check(
        "status_json_prints_one_object",
        status.is_ok(),
        "exit 0, one JSON object",
        match &status {
            Ok(_) => "exit 0, one JSON object".to_owned(),
            Err(e) => e.clone(),
        },
        None,
    );
    let Ok(s) = status else {
        ctx.stop_daemon("daemon_stops_on_sigterm");
        return Ok(());
    };
    ctx.note(&format!(
        "enforcerd status --json: {}",
        out.stdout.trim_end()
    ));

    let kernel = uname_release();
    ctx.check(
        "status_names_daemon_and_kernel",
        u64_at(&s, &["pid"]) == Some(u64::from(daemon_pid))
            && json_str(&s, "kernel") == kernel
            && !json_str(&s, "version").is_empty()
            && !json_str(&s, "started").is_empty(),
        format!("pid {daemon_pid}, kernel {kernel}, a version and a start time"),
        format!(
            "pid {}, kernel {}, version {:?}, started {:?}",
            s.get("pid").unwrap_or(&Value::Null),
            json_str(&s, "kernel"),
            json_str(&s, "version"),
            json_str(&s, "started")
        ),
        None,
    );
    let programs: Vec<&Value> = s
        .get("programs")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut hooks: Vec<&str> = programs.iter().map(|p| json_str(p, "hook")).collect();
    hooks.sort_unstable();
    let attached = programs
        .iter()
        .filter(|p| p.get("attached") == Some(&Value::Bool(true)))
        .count();
    // Least privilege: once attached, the daemon keeps CAP_BPF (bit 39) and nothing else, in
    // every set and every thread, and cannot regain more (no_new_privs).
    let pid = ctx.daemon_pid().unwrap_or(0);
    let want = [
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000008000000000"),
        ("CapEff", "0000008000000000"),
        ("CapBnd", "0000008000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ];
    let mut wrong = Vec::new();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for tid in &tasks {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        for (key, value) in want {
            let got = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}:")))
                .map(str::trim);
            if got != Some(value) {
                wrong.push(format!("thread {tid} {key} {got:?}"));
            }
        }
    }
    ctx.check(
        "daemon_keeps_only_cap_bpf_in_every_thread",
        !tasks.is_empty() && wrong.is_empty(),
        "CapPrm/CapEff/CapBnd = CAP_BPF only, CapInh/CapAmb empty, NoNewPrivs 1, all threads",
        if wrong.is_empty() {
            format!("{} threads as expected", tasks.len())
        } else {
            wrong.join("; ")
        },
        None,
    );
    ctx.check(
        "status_shows_every_program_attached",
        attached == 14
            && hooks
                == [
                    "bprm_check_security",
                    "bprm_committed_creds",
                    "d_instantiate",
                    "file_open",
                    "inode_rename",
                    "inode_rmdir",
                    "inode_unlink",
                    "mmap_file",
                    "path_link",
                    "path_rename",
                    "socket_connect",
                    "socket_sendmsg",
                    "tracepoint/cgroup_mkdir",
                    "tracepoint/cgroup_rmdir",
                ],
        "14 programs, all attached: exec, exec commit, mmap, file open, link, rename, the four \
         that keep file_open's remembered verdicts true, connect, sendmsg, cgroup mkdir and rmdir",
        format!(
            "{} programs, {attached} attached: {}",
            programs.len(),
            programs
                .iter()
                .map(|p| format!(
                    "{} ({}, attached {}, {} instructions)",
                    json_str(p, "name"),
                    json_str(p, "hook"),
                    p.get("attached").unwrap_or(&Value::Null),
                    p.get("verified_instructions").unwrap_or(&Value::Null)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None,
    );
    ctx.check(
        "status_shows_signatures_required",
        s.get("unsigned_allowed") == Some(&Value::Bool(false))
            && json_str(&s, "profiles_dir") == dir.display().to_string(),
        format!("unsigned_allowed false, profiles_dir {}", dir.display()),
        format!(
            "unsigned_allowed {}, profiles_dir {}",
            s.get("unsigned_allowed").unwrap_or(&Value::Null),
            json_str(&s, "profiles_dir")
        ),
        None,
    );

    let profile = s
        .get("profiles")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|p| json_str(p, "name") == NAME))
        .cloned()
        .unwrap_or(Value::Null);
    let describe = |p: &Value| {
        if p.is_null() {
            format!(
                "no profile {NAME} in {}",
                s.get("profiles").unwrap_or(&Value::Null)
            )
        } else {
            p.to_string()
        }
    };
    ctx.check(
        "status_lists_profile_with_serial",
        u64_at(&profile, &["serial"]) == Some(SERIAL),
        format!("profile {NAME} with serial {SERIAL}"),
        describe(&profile),
        None,
    );
    let sha256 = json_str(&profile, "sha256");
    ctx.check(
        "status_profile_sha256_is_digest_of_file",
        fixtures::is_sha256_ref(sha256) && sha256.eq_ignore_ascii_case(&file_sha),
        format!("sha256 {file_sha} (busybox sha256sum {file_str})"),
        format!("sha256 {sha256:?}"),
        None,
    );
    let cgroups = strs(profile.get("cgroups"));
    ctx.check(
        "status_profile_mode_and_cgroups",
        json_str(&profile, "mode") == "enforce"
            && json_str(&profile, "on_violation") == "deny"
            && cgroups == [cg.rel.clone()]
            && json_str(&profile, "source") == file_str,
        format!(
            "mode enforce, on_violation deny, cgroups [{}], source {file_str}",
            cg.rel
        ),
        format!(
            "mode {:?}, on_violation {:?}, cgroups [{}], source {:?}",
            json_str(&profile, "mode"),
            json_str(&profile, "on_violation"),
            cgroups.join(", "),
            json_str(&profile, "source")
        ),
        None,
    );
    let deny = u64_at(&profile, &["decisions", "deny"]);
    ctx.check(
        "status_counts_the_profiles_denials",
        deny.is_some_and(|d| d >= DENIALS),
        format!("decisions.deny >= {DENIALS}"),
        format!(
            "decisions {}",
            profile.get("decisions").unwrap_or(&Value::Null)
        ),
        None,
    );
    let file_hook = s
        .get("hooks")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|h| json_str(h, "hook") == "file"))
        .cloned()
        .unwrap_or(Value::Null);
    ctx.check(
        "status_hook_counters_count_denials",
        u64_at(&file_hook, &["denied"]).is_some_and(|d| d >= DENIALS),
        format!("hooks: file denied >= {DENIALS}"),
        format!("hooks: {}", s.get("hooks").unwrap_or(&Value::Null)),
        None,
    );
    let reload = s.get("last_reload").cloned().unwrap_or(Value::Null);
    ctx.check(
        "status_shows_last_reload",
        reload.get("ok") == Some(&Value::Bool(true))
            && strs(reload.get("added")).iter().any(|n| n == NAME)
            && strs(reload.get("problems")).is_empty(),
        format!("last_reload: ok true, added [{NAME}], no problems"),
        format!("last_reload: {reload}"),
        None,
    );

    let out = run_command(ENFORCERD, &["status"]);
    ctx.check(
        "human_status_names_the_profile",
        out.code == Some(0) && out.stdout.contains(NAME),
        format!("exit 0, output names {NAME}"),
        out.summary(),
        None,
    );
    let out = run_command_as(ENFORCERD, &["status", "--json"], Some(NOBODY));
    let printed = format!("{}{}", out.stdout, out.stderr);
    ctx.check(
        "status_as_non_root_refused",
        out.code.is_some_and(|c| c != 0) && printed.contains("root") && !printed.contains(NAME),
        format!("as uid {NOBODY}: exit != 0, a message that mentions root, no status"),
        out.summary(),
        None,
    );

    ctx.stop_daemon("daemon_stops_on_sigterm");
    let out = run_command(ENFORCERD, &["status", "--json"]);
    ctx.check(
        "status_without_daemon_says_not_running",
        out.code.is_some_and(|c| c != 0) && out.stderr.contains("not running"),
        "exit != 0, \"enforcerd is not running ...\"",
        out.summary(),
        None,
    );
    Ok(())
}
