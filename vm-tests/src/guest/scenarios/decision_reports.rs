//! Every kind of non-allow decision — an exec, file and connect denial, a kill and an audit
//! hit — reaches `enforcerd events --json` with every field of spec.md "Decisions" holding
//! the right value (the process's pid, parent, uid, comm and executable, the cgroup's id and
//! path, the target, the profile's serial and digest), and the metrics endpoint counts it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use crate::guest::daemon::{ENFORCERD, run_command, status_json};
use crate::guest::fixtures::{self, DENIED_BUSYBOX, EXEC_ALLOW_ALL};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Exec, Outcome, Proto, Run, connect_op, open_op};
use anyhow::{Context as _, Result};
use libc::O_RDONLY;
use serde_json::{Value, json};

const SECRET: &str = "/srv/reports/secret.txt";
const METRICS: &str = "127.0.0.1:9478";
/// Nothing listens there; the denial comes before any packet.
const DENIED_ADDR: &str = "127.0.0.1:9";
/// The uid the file denial runs as (the file is world-readable, so only the profile denies).
const NOBODY: u32 = 65534;

pub fn each_decision_is_reported_with_every_field_and_counted(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    fixtures::write(SECRET, "s3cret\n", 0o644)?;
    let deny_cg = Cgroup::create("/reports_deny")?;
    let kill_cg = Cgroup::create("/reports_kill")?;
    let audit_cg = Cgroup::create("/reports_audit")?;
    let dir = fixtures::profile_dir("decision_reports")?;
    let files_rule = format!(
        "  files:\n    default: allow\n    rules:\n      - {{path: {SECRET}, access: [read], action: deny}}\n"
    );
    let deny_body = format!(
        "  exec:\n    default: allow\n    deny: [{DENIED_BUSYBOX}]\n{files_rule}  network:\n    connect:\n      default: allow\n      deny:\n        - {{cidr: 127.0.0.1/32, ports: [9], protocol: tcp}}\n"
    );
    let other_body = format!(
        "{EXEC_ALLOW_ALL}{files_rule}{}",
        fixtures::CONNECT_ALLOW_ALL
    );
    let profiles = [
        (
            "deny.yaml",
            "reports-deny",
            &deny_cg,
            "enforce",
            "deny",
            &deny_body,
        ),
        (
            "kill.yaml",
            "reports-kill",
            &kill_cg,
            "enforce",
            "kill",
            &other_body,
        ),
        (
            "audit.yaml",
            "reports-audit",
            &audit_cg,
            "audit",
            "deny",
            &other_body,
        ),
    ];
    for (file, name, cg, mode, on_violation, body) in profiles {
        let yaml = fixtures::profile(name, &cg.rel, mode, on_violation, body);
        fixtures::write_profile(&dir, file, &yaml)?;
    }
    ctx.start_daemon_args(&dir, &["--metrics-address", METRICS], "daemon_ready")?;
    let status = status_json().map_err(anyhow::Error::msg)?;

    let exe = std::env::current_exe()?.display().to_string();
    let comm: String = std::path::Path::new(&exe)
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let runner = std::process::id();

    // The five decisions, each by its own child of the runner.
    let exec = ctx.exec(
        Some(&deny_cg),
        &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]),
    );
    ctx.expect("exec_denied", &Outcome::EPERM, &exec);
    let file = ctx.op(
        Some(&deny_cg),
        &format!("as uid {NOBODY}: open({SECRET})"),
        || {
            // SAFETY: plain setresuid in the forked child.
            if unsafe { libc::setresuid(NOBODY, NOBODY, NOBODY) } != 0 {
                return Err(200);
            }
            open_op(SECRET, O_RDONLY)
        },
    );
    ctx.expect("file_denied", &Outcome::EPERM, &file);
    let addr = DENIED_ADDR.parse()?;
    let connect = ctx.op(
        Some(&deny_cg),
        &format!("connect({DENIED_ADDR}) tcp"),
        || connect_op(addr, Proto::Tcp),
    );
    ctx.expect("connect_denied", &Outcome::EPERM, &connect);
    let kill = ctx.op(Some(&kill_cg), &format!("open({SECRET})"), || {
        open_op(SECRET, O_RDONLY)
    });
    ctx.expect("file_read_killed", &Outcome::KILLED, &kill);
    let audit = ctx.op(Some(&audit_cg), &format!("open({SECRET})"), || {
        open_op(SECRET, O_RDONLY)
    });
    ctx.expect("audited_read_allowed", &Outcome::Ok, &audit);

    // `enforcerd events --json` until all five are there.
    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let out = run_command(ENFORCERD, &["events", "--json"]);
        let lines: Vec<Value> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 5 || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ctx.check(
        "events_lists_five_decisions",
        events.len() == 5,
        "5 decision lines from enforcerd events --json",
        format!("{} lines", events.len()),
        Some(format!("{events:#?}")),
    );

    let profile_of = |name: &str| -> (u64, String) {
        status["profiles"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| {
                (
                    p["serial"].as_u64().unwrap_or(0),
                    fixtures::json_str(p, "sha256").to_owned(),
                )
            })
            .unwrap_or_default()
    };
    let expected = |run: &Run, cg: &Cgroup, profile: &str, mode: &str, fields: Value| {
        let cgroup_id = std::fs::metadata(cg.dir()).map(|m| m.ino()).unwrap_or(0);
        let (serial, sha256) = profile_of(profile);
        let mut v = json!({
            "reason": "rule", "profile": profile, "serial": serial, "sha256": sha256,
            "mode": mode, "pid": run.pid, "tid": run.pid, "ppid": runner, "uid": 0,
            "comm": comm, "exe": exe, "cgroup_id": cgroup_id, "cgroup": cg.rel, "count": 1,
        });
        for (k, x) in fields.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    let cases = [
        (
            "exec_deny_reported",
            expected(
                &exec,
                &deny_cg,
                "reports-deny",
                "enforce",
                json!({"hook": "exec", "decision": "deny", "target": DENIED_BUSYBOX}),
            ),
        ),
        (
            "file_deny_reported",
            expected(
                &file,
                &deny_cg,
                "reports-deny",
                "enforce",
                json!({"hook": "file", "decision": "deny", "target": SECRET, "access": "read",
                       "uid": NOBODY}),
            ),
        ),
        (
            "connect_deny_reported",
            expected(
                &connect,
                &deny_cg,
                "reports-deny",
                "enforce",
                json!({"hook": "connect", "decision": "deny", "target": DENIED_ADDR,
                       "protocol": "tcp"}),
            ),
        ),
        (
            "kill_reported",
            expected(
                &kill,
                &kill_cg,
                "reports-kill",
                "enforce",
                json!({"hook": "file", "decision": "kill", "target": SECRET, "access": "read"}),
            ),
        ),
        (
            "audit_reported",
            expected(
                &audit,
                &audit_cg,
                "reports-audit",
                "audit",
                json!({"hook": "file", "decision": "audit", "target": SECRET, "access": "read"}),
            ),
        ),
    ];
    let now = time::OffsetDateTime::now_utc();
    for (check, want) in cases {
        let got = events
            .iter()
            .find(|e| e["pid"] == want["pid"] && e["hook"] == want["hook"]);
        let Some(got) = got else {
            ctx.check(check, false, want.to_string(), "no such line", None);
            continue;
        };
        // Every expected field with its value; the timestamp is RFC 3339 and recent.
        let mut wrong: Vec<String> = want
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| got.get(k.as_str()) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: want {v}, got {}",
                    got.get(k.as_str()).unwrap_or(&Value::Null)
                )
            })
            .collect();
        let ts = time::OffsetDateTime::parse(
            fixtures::json_str(got, "ts"),
            &time::format_description::well_known::Rfc3339,
        );
        match ts {
            Ok(t) if (now - t).abs() < time::Duration::minutes(2) => {}
            _ => wrong.push(format!("ts: want RFC 3339 within 2 min, got {}", got["ts"])),
        }
        ctx.check(
            check,
            wrong.is_empty(),
            want.to_string(),
            if wrong.is_empty() {
                got.to_string()
            } else {
                wrong.join("; ")
            },
            Some(got.to_string()),
        );
    }

    // The readable form names the decision and the target.
    let out = run_command(ENFORCERD, &["events"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(" file ") && l.contains("DENY"));
    ctx.check(
        "events_readable_line",
        line.is_some_and(|l| l.contains(SECRET) && l.contains("reports-deny")),
        format!("a DENY file line naming {SECRET} and reports-deny"),
        out.stdout.trim_end().to_owned(),
        None,
    );

    // Metrics: the same five decisions, and the kernel's counts (refreshed every second).
    let want_metrics = [
        r#"enforcerd_decisions_total{hook="exec",decision="deny",profile="reports-deny"} 1"#,
        r#"enforcerd_decisions_total{hook="file",decision="deny",profile="reports-deny"} 1"#,
        r#"enforcerd_decisions_total{hook="connect",decision="deny",profile="reports-deny"} 1"#,
        r#"enforcerd_decisions_total{hook="file",decision="kill",profile="reports-kill"} 1"#,
        r#"enforcerd_decisions_total{hook="file",decision="audit",profile="reports-audit"} 1"#,
        r#"enforcerd_kernel_decisions_total{hook="exec",decision="deny"} 1"#,
        r#"enforcerd_kernel_decisions_total{hook="file",decision="deny"} 1"#,
        r#"enforcerd_kernel_decisions_total{hook="file",decision="kill"} 1"#,
        r#"enforcerd_kernel_decisions_total{hook="file",decision="audit"} 1"#,
        r#"enforcerd_kernel_decisions_total{hook="connect",decision="deny"} 1"#,
        r#"enforcerd_events_reported_total{hook="file"} 3"#,
        r#"enforcerd_events_dropped_total{hook="file"} 0"#,
        "enforcerd_profiles_loaded 3",
        "enforcerd_profile_errors_total 0",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, missing) = loop {
        let text = scrape(METRICS).unwrap_or_else(|e| format!("scrape failed: {e:#}"));
        let missing: Vec<&str> = want_metrics
            .iter()
            .copied()
            .filter(|m| !text.lines().any(|l| l == *m))
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break (text, missing);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    ctx.check(
        "metrics_count_each_decision",
        missing.is_empty(),
        format!("{} sample lines", want_metrics.len()),
        if missing.is_empty() {
            "all present".into()
        } else {
            format!("missing {missing:?}")
        },
        Some(
            text.lines()
                .filter(|l| l.starts_with("enforcerd_"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    );

    ctx.stop_daemon("daemon_stops_on_sigterm");
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.1; the body.
fn scrape(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "answer: {head}");
    Ok(body.to_owned())
}
