//! mode: audit — nothing is blocked, and every would-be denial shows up as a decision line
//! with decision "audit", the right hook, target and pid.

use crate::guest::daemon::DECISION_TIMEOUT;
use crate::guest::fixtures::{
    self, ALLOWED_DIR, BUSYBOX, DATA_DIR, DENIED_BUSYBOX, PUBLIC, REPORT, SECRET,
};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Exec, Outcome, Proto, Run, connect_op, open_op, write_op};
use anyhow::{Context as _, Result};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// What the decision line for one action must say.
struct Expect<'a> {
    hook: &'a str,
    target: &'a str,
    /// (field, value) pairs that must match too.
    extra: &'a [(&'a str, &'a str)],
}

pub fn audit_blocks_nothing_and_reports_every_would_be_denial(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    fixtures::srv_tree()?;
    let _listener = TcpListener::bind("0.0.0.0:9091").context("listening on 0.0.0.0:9091")?;

    let cg = Cgroup::create("/audit_mode")?;
    let dir = fixtures::profile_dir("audit_mode")?;
    let body = format!(
        "  exec:
    default: deny
    allow: [{BUSYBOX}, {ALLOWED_DIR}/]
  files:
    default: allow
    rules:
      - {{path: {SECRET}, access: [read, write], action: deny}}
      - {{path: {DATA_DIR}/, access: [write], action: deny}}
  network:
    connect:
      default: deny
      allow:
        - {{cidr: 127.0.0.0/8, ports: [8080], protocol: tcp}}
"
    );
    fixtures::write_profile(
        &dir,
        "audit.yaml",
        &fixtures::profile("audit-mode", &cg.rel, "audit", "deny", &body),
    )?;
    ctx.start_daemon(&dir, "daemon_ready")?;
    let g = Some(&cg);

    let r = ctx.exec(g, &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("unlisted_exec_not_blocked", &Outcome::Exited(0), &r);
    reported(
        ctx,
        "unlisted_exec_reported_as_audit",
        &r,
        &Expect {
            hook: "exec",
            target: DENIED_BUSYBOX,
            extra: &[],
        },
    );

    let r = ctx.op(g, &format!("open({SECRET}, O_RDONLY)"), || {
        open_op(SECRET, libc::O_RDONLY)
    });
    ctx.expect("denied_read_not_blocked", &Outcome::Ok, &r);
    reported(
        ctx,
        "denied_read_reported_as_audit",
        &r,
        &Expect {
            hook: "file",
            target: SECRET,
            extra: &[("access", "read")],
        },
    );

    let r = ctx.op(
        g,
        &format!("open({REPORT}, O_WRONLY|O_APPEND) + write"),
        || write_op(REPORT, libc::O_WRONLY | libc::O_APPEND, b"audited\n"),
    );
    ctx.expect("write_in_read_only_subtree_not_blocked", &Outcome::Ok, &r);
    reported(
        ctx,
        "write_in_read_only_subtree_reported_as_audit",
        &r,
        &Expect {
            hook: "file",
            target: REPORT,
            extra: &[("access", "write")],
        },
    );

    let addr: SocketAddr = "127.0.0.1:9091".parse().expect("valid address");
    let r = ctx.op(g, &format!("connect(tcp {addr})"), || {
        connect_op(addr, Proto::Tcp)
    });
    ctx.expect("denied_connect_not_blocked", &Outcome::Ok, &r);
    reported(
        ctx,
        "denied_connect_reported_as_audit",
        &r,
        &Expect {
            hook: "connect",
            target: "127.0.0.1:9091",
            extra: &[("protocol", "tcp")],
        },
    );

    // Allowed operations are counted, not reported.
    let r = ctx.op(g, &format!("open({PUBLIC}, O_RDONLY)"), || {
        open_op(PUBLIC, libc::O_RDONLY)
    });
    ctx.expect("allowed_read_succeeds", &Outcome::Ok, &r);
    let d = ctx.daemon.as_mut().context("daemon")?;
    let line = d.wait_decision(Duration::from_secs(1), |v| v["target"] == PUBLIC);
    ctx.check(
        "allowed_read_not_reported",
        line.is_none(),
        format!("no decision line with target {PUBLIC}"),
        match &line {
            Some(v) => v.to_string(),
            None => "none".into(),
        },
        None,
    );

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

/// Checks that the daemon printed the audit decision for `run`.
fn reported(ctx: &mut Ctx, check: &str, run: &Run, e: &Expect<'_>) {
    let pid = i64::from(run.pid);
    let mut expected = format!(
        "a decision line with hook={:?} decision=\"audit\" target={:?} pid={pid}",
        e.hook, e.target
    );
    for (k, v) in e.extra {
        expected.push_str(&format!(" {k}={v:?}"));
    }
    let Some(d) = ctx.daemon.as_mut() else {
        ctx.check(check, false, expected, "no daemon", None);
        return;
    };
    let matches = |v: &Value| {
        v["hook"] == e.hook
            && v["decision"] == "audit"
            && v["target"] == e.target
            && v["pid"].as_i64() == Some(pid)
            && e.extra.iter().all(|(k, want)| field_has(&v[*k], want))
    };
    if let Some(v) = d.wait_decision(DECISION_TIMEOUT, matches) {
        ctx.check(check, true, expected, v.to_string(), None);
        return;
    }
    // Show the closest lines: same target, or same pid.
    let near: Vec<String> = d
        .decisions()
        .into_iter()
        .filter(|v| v["target"] == e.target || v["pid"].as_i64() == Some(pid))
        .map(|v| v.to_string())
        .collect();
    let all = d.decisions().len();
    let got = if near.is_empty() {
        format!("no line for this target or pid ({all} decision lines in total)")
    } else {
        near.join("\n")
    };
    ctx.check(check, false, expected, got, None);
}

/// `access` may be reported as "read,write" for an O_RDWR open; a write-only open must say
/// "write". Other fields compare as strings.
fn field_has(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|i| i == want) && items.len() == 1,
        _ => false,
    }
}
