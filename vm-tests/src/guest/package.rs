//! `vm-guest package --deb FILE`: the packaged install under real systemd. A oneshot unit
//! starts it once the Debian VM (`vm-tests package`) reached multi-user.target; it installs
//! the .deb with dpkg, proves the packaged `enforcerd.service` enforces a signed profile on a
//! systemd unit, reports to the journal and runs with the hardening it promises, then purges
//! the package and proves everything is gone and enforcement has stopped.
//!
//! Every check is an exit status, an errno or a file's state; [`CHECKS`] lists them all, and
//! the host fails the run for any check that did not report.

use super::daemon::{CommandOutput, run_prepared_within, status_json};
use super::fixtures::{self, json_str, json_strings, wait_until};
use super::out::{Ctx, emit};
use super::sys::errno_name;
use crate::protocol::Event;
use crate::unit_capabilities::UNIT_CAPABILITIES;
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The phases (scenarios in the protocol) and their checks, in the order they run.
pub const CHECKS: &[(&str, &[&str])] = &[
    (
        "package_install",
        &[
            "dpkg_install_succeeds",
            "unit_enabled",
            "unit_is_type_notify",
            "unit_active_running_without_restarts",
            "status_answers_from_the_main_pid",
        ],
    ),
    (
        "package_enforce",
        &[
            "reload_succeeds",
            "signed_profile_applied",
            "unsigned_profile_refused",
            "denied_in_selected_unit",
            "allowed_in_another_unit",
            "allowed_outside_units",
            "unsigned_profile_not_enforced",
            "decision_in_journal",
            "no_decision_for_allowed_opens",
        ],
    ),
    (
        "package_hardening",
        &[
            "capabilities_only_cap_bpf",
            "bounding_set_only_cap_bpf",
            "no_new_privs",
            "protect_system_in_effect",
            "kernel_tunables_read_only_pins_writable",
            "unit_capability_bounding_set",
        ],
    ),
    (
        "package_restart",
        &[
            "pinned_while_running",
            "denied_after_service_sigkill",
            "restarted_by_systemd",
            "previous_generation_replaced",
            "denied_after_restart",
            "reports_resume_after_restart",
        ],
    ),
    (
        "package_purge",
        &[
            "dpkg_purge_succeeds",
            "package_forgotten",
            "unit_gone",
            "daemon_stopped",
            "binary_gone",
            "config_gone",
            "state_gone",
            "pins_gone",
            "not_enforced_after_purge",
        ],
    ),
];

pub const SERVICE: &str = "enforcerd.service";
const ENFORCERD: &str = "/usr/bin/enforcerd";
/// Where the host puts this runner in the VM.
pub const VM_GUEST: &str = "/usr/local/bin/vm-guest";
/// The unit the signed profile selects.
const WORKLOAD: &str = "enforcerd-vmtest-workload.service";
/// A unit no profile selects.
const OTHER: &str = "enforcerd-vmtest-other.service";
/// The unit an unsigned profile selects (it must not be governed).
const UNSIGNED_WORKLOAD: &str = "enforcerd-vmtest-unsigned.service";
const PROFILE: &str = "vmtest-secret";
const UNSIGNED_PROFILE: &str = "vmtest-unsigned";
const SECRET: &str = "/etc/enforcerd-test-secret";
const SECRET_CONTENT: &str = "vmtest secret\n";
const KEYS: &str = "/root/vmtest-keys";
const PROFILES_D: &str = "/etc/enforcerd/profiles.d";
const TRUSTED_D: &str = "/etc/enforcerd/trusted.d";
const PIN_DIR: &str = "/sys/fs/bpf/enforcerd";
/// `MESSAGE_ID` of every decision entry (enforcerd/src/report/journal.rs).
const DECISION_MESSAGE_ID: &str = "6c1e0f3a9b7d4e52a8f06d19c3b2e7a4";
/// CAP_BPF (39) alone, as /proc/PID/status prints capability sets.
const CAP_BPF_ONLY: &str = "0000008000000000";
/// How long the service may take to become active (BTF parse and load under emulation).
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a command to completion, killed after `timeout`.
fn run(program: &str, args: &[&str], timeout: Duration) -> CommandOutput {
    let mut command = Command::new(program);
    command.args(args);
    run_prepared_within(command, program, timeout)
}

fn short(program: &str, args: &[&str]) -> CommandOutput {
    run(program, args, Duration::from_secs(60))
}

/// `systemctl show -p A,B UNIT` as a map.
fn show(unit: &str, props: &str) -> BTreeMap<String, String> {
    let out = short("systemctl", &["show", "-p", props, unit]);
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn render(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main_pid() -> Option<u32> {
    show(SERVICE, "MainPID")
        .get("MainPID")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
}

/// `vm-guest open PATH`: opens PATH read-only and reads it, prints what happened, and exits
/// with the errno (0 when it could read the file). The probe the workload units run.
pub fn open_probe(path: &str) -> u8 {
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mut s = String::new();
            match f.read_to_string(&mut s) {
                Ok(_) => {
                    println!("open {path}: ok: {}", s.trim_end());
                    0
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(255);
                    println!("read {path}: {}", errno_name(errno));
                    u8::try_from(errno).unwrap_or(255)
                }
            }
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(255);
            println!("open {path}: {}", errno_name(errno));
            u8::try_from(errno).unwrap_or(255)
        }
    }
}

/// Runs the open probe in a transient unit (`systemd-run --unit=UNIT --wait --pipe`): the
/// exit status is the probe's errno.
fn probe_in_unit(ctx: &Ctx, unit: &str) -> CommandOutput {
    let unit_arg = format!("--unit={unit}");
    let out = run(
        "systemd-run",
        &[
            &unit_arg,
            "--wait",
            "--pipe",
            "--collect",
            "--quiet",
            VM_GUEST,
            "open",
            SECRET,
        ],
        Duration::from_secs(60),
    );
    ctx.note(&format!(
        "$ systemd-run {unit_arg} --wait --pipe --collect --quiet {VM_GUEST} open {SECRET} -> {}",
        out.summary().replace('\n', " | ")
    ));
    out
}

fn expect_probe(ctx: &mut Ctx, check: &str, out: &CommandOutput, errno: i32) {
    let (expected, ok) = if errno == 0 {
        (
            format!("exit 0, the file read: {}", SECRET_CONTENT.trim_end()),
            out.code == Some(0) && out.stdout.contains(SECRET_CONTENT.trim_end()),
        )
    } else {
        let name = errno_name(errno);
        (
            format!("exit {errno}: open {SECRET}: {name}"),
            out.code == Some(errno) && out.stdout.contains(&format!("open {SECRET}: {name}")),
        )
    };
    ctx.check(check, ok, expected, out.summary(), None);
}

/// Runs the phases; the runner's exit status (0 all passed, 1 some failed).
pub fn run_all(deb: &Path) -> u8 {
    let mut failed = 0;
    for (phase, _) in CHECKS {
        emit(&Event::ScenarioStart((*phase).into()));
        let started = Instant::now();
        let mut ctx = Ctx::new(phase);
        let problem = ctx.run_to_end(|ctx| match *phase {
            "package_install" => install(ctx, deb),
            "package_enforce" => enforce(ctx),
            "package_hardening" => hardening(ctx),
            "package_restart" => restart(ctx),
            "package_purge" => purge(ctx),
            other => bail!("no phase named {other}"),
        });
        if let Some(problem) = problem {
            let journal = short(
                "journalctl",
                &[
                    "-u",
                    SERVICE,
                    "--no-pager",
                    "-n",
                    "40",
                    "-o",
                    "short-monotonic",
                ],
            );
            ctx.check(
                "(scenario aborted)",
                false,
                "the phase runs to its end",
                problem,
                Some(format!("journalctl -u {SERVICE}:\n{}", journal.stdout)),
            );
        }
        ctx.note(&format!(
            "{} passed, {} failed in {:.1} s",
            ctx.passed,
            ctx.failed,
            started.elapsed().as_secs_f64()
        ));
        failed += ctx.failed;
        emit(&Event::ScenarioEnd((*phase).into()));
    }
    emit(&Event::Done(
        if failed == 0 { "ok" } else { "failed" }.into(),
    ));
    u8::from(failed > 0)
}

fn service_journal() -> Option<String> {
    let out = short(
        "journalctl",
        &[
            "-u",
            SERVICE,
            "--no-pager",
            "-n",
            "30",
            "-o",
            "short-monotonic",
        ],
    );
    Some(format!(
        "journalctl -u {SERVICE}:\n{}",
        out.stdout.trim_end()
    ))
}

fn install(ctx: &mut Ctx, deb: &Path) -> Result<()> {
    let deb = deb.to_str().context("non-UTF-8 .deb path")?;
    let out = run("dpkg", &["-i", deb], Duration::from_secs(300));
    ctx.note(&format!("$ dpkg -i {deb}\n{}", out.summary()));
    // The checks below run even when dpkg failed: they show how far the install got.
    ctx.check(
        "dpkg_install_succeeds",
        out.code == Some(0),
        "exit 0",
        out.summary(),
        service_journal(),
    );

    let out = short("systemctl", &["is-enabled", SERVICE]);
    ctx.check(
        "unit_enabled",
        out.code == Some(0) && out.stdout.trim() == "enabled",
        "exit 0: enabled",
        out.summary(),
        None,
    );

    // Type=notify: systemd holds the unit in "activating" until READY=1, so "active" below
    // means the daemon said it was ready.
    let props = "Type,ActiveState,SubState,NRestarts,MainPID,Result";
    let mut state = show(SERVICE, props);
    let waited = wait_until(ACTIVE_TIMEOUT, || {
        state = show(SERVICE, props);
        // Still activating after a restart is a failure already: no need to wait it out.
        state.get("ActiveState").map(String::as_str) != Some("activating")
            || state.get("NRestarts").is_some_and(|n| n != "0")
    });
    ctx.note(&format!(
        "systemctl show {SERVICE}: {} (after {:.1} s)",
        render(&state),
        waited.unwrap_or(ACTIVE_TIMEOUT).as_secs_f64()
    ));
    ctx.check(
        "unit_is_type_notify",
        state.get("Type").map(String::as_str) == Some("notify"),
        "Type=notify",
        format!("Type={}", state.get("Type").map_or("?", String::as_str)),
        None,
    );
    let is_active = short("systemctl", &["is-active", SERVICE]);
    let ok = is_active.stdout.trim() == "active"
        && state.get("ActiveState").map(String::as_str) == Some("active")
        && state.get("SubState").map(String::as_str) == Some("running")
        && state.get("NRestarts").map(String::as_str) == Some("0");
    ctx.check(
        "unit_active_running_without_restarts",
        ok,
        "is-active: active; ActiveState=active SubState=running NRestarts=0",
        format!("is-active: {}; {}", is_active.stdout.trim(), render(&state)),
        if ok { None } else { service_journal() },
    );

    // What is pinned now (the purge must leave nothing), for the log: `pins_gone` asserts the
    // end state whether or not this daemon pins its programs.
    let pinned: Vec<String> = std::fs::read_dir(PIN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    ctx.note(&format!("pinned under {PIN_DIR}: {pinned:?}"));

    let main = main_pid();
    let status = status_json();
    let pid = status
        .as_ref()
        .ok()
        .and_then(|s| s["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok());
    ctx.check(
        "status_answers_from_the_main_pid",
        status.is_ok() && pid.is_some() && pid == main,
        format!("enforcerd status --json exits 0 with pid = MainPID {main:?}"),
        match &status {
            Ok(s) => format!("status pid {pid:?}, version {}", json_str(s, "version")),
            Err(e) => e.clone(),
        },
        None,
    );
    if let Some(j) = service_journal() {
        ctx.note(&j);
    }
    Ok(())
}

fn profile_yaml(name: &str, unit: &str) -> String {
    format!(
        "apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: {name}
  serial: 1
spec:
  selector:
    systemdUnit: {unit}
  mode: enforce
  onViolation: deny
{exec}  files:
    default: allow
    rules:
      - {{path: {SECRET}, access: [read, write], action: deny}}
{net}",
        exec = fixtures::EXEC_ALLOW_ALL,
        net = fixtures::CONNECT_ALLOW_ALL,
    )
}

fn loaded_profiles(status: &Value) -> Vec<String> {
    status["profiles"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn enforce(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(SECRET, SECRET_CONTENT, 0o644)?;
    std::fs::create_dir_all(KEYS)?;
    let secret_key = format!("{KEYS}/vmtest.key");
    let public_key = format!("{KEYS}/vmtest.pub");
    let out = short(
        ENFORCERD,
        &[
            "keygen",
            "--no-password",
            "--force",
            "--secret-key",
            &secret_key,
            "--public-key",
            &public_key,
        ],
    );
    if out.code != Some(0) {
        bail!("enforcerd keygen failed: {}", out.summary());
    }
    std::fs::create_dir_all(TRUSTED_D)?;
    std::fs::copy(&public_key, format!("{TRUSTED_D}/vmtest.pub"))
        .with_context(|| format!("copying the public key into {TRUSTED_D}"))?;
    std::fs::create_dir_all(PROFILES_D)?;

    // Written elsewhere and moved in whole, with the signature first, so the daemon's
    // inotify reload never sees the profile without its signature.
    let signed = format!("{PROFILES_D}/{PROFILE}.yaml");
    let staged = format!("{KEYS}/{PROFILE}.yaml");
    std::fs::write(&staged, profile_yaml(PROFILE, WORKLOAD))?;
    let out = short(ENFORCERD, &["sign", "--key", &secret_key, &staged]);
    if out.code != Some(0) {
        bail!("enforcerd sign failed: {}", out.summary());
    }
    std::fs::copy(format!("{staged}.sig"), format!("{signed}.sig"))?;
    std::fs::copy(&staged, &signed)?;
    // Not signed: must be refused, and its unit left alone.
    let unsigned = format!("{PROFILES_D}/{UNSIGNED_PROFILE}.yaml");
    std::fs::write(&unsigned, profile_yaml(UNSIGNED_PROFILE, UNSIGNED_WORKLOAD))?;
    ctx.note(&format!(
        "wrote {signed} (+ .sig, key {public_key} in {TRUSTED_D}) and {unsigned} (no .sig)"
    ));

    // A reload that only exits 0 proves little: the daemon must report a SIGHUP reload.
    let out = short("systemctl", &["reload", SERVICE]);
    let mut trigger = String::new();
    if out.code == Some(0) {
        wait_until(Duration::from_secs(30), || {
            trigger = status_json()
                .map(|s| json_str(&s["last_reload"], "trigger").to_owned())
                .unwrap_or_default();
            trigger == "SIGHUP"
        });
    }
    let reloaded = out.code == Some(0) && trigger == "SIGHUP";
    ctx.check(
        "reload_succeeds",
        reloaded,
        format!("systemctl reload {SERVICE}: exit 0, then status last_reload.trigger SIGHUP"),
        format!("{}; last_reload.trigger {trigger:?}", out.summary()),
        if reloaded { None } else { service_journal() },
    );

    let mut status = status_json();
    wait_until(Duration::from_secs(30), || {
        status = status_json();
        status.as_ref().is_ok_and(|s| {
            loaded_profiles(s).iter().any(|p| p == PROFILE)
                && json_strings(&s["last_reload"]["problems"])
                    .iter()
                    .any(|p| p.contains(UNSIGNED_PROFILE))
        })
    });
    let (profiles, problems) = match &status {
        Ok(s) => (
            loaded_profiles(s),
            json_strings(&s["last_reload"]["problems"]),
        ),
        Err(e) => (vec![], vec![e.clone()]),
    };
    ctx.check(
        "signed_profile_applied",
        profiles.iter().any(|p| p == PROFILE),
        format!("enforcerd status lists profile {PROFILE}"),
        format!("profiles {profiles:?}; problems {problems:?}"),
        service_journal(),
    );
    ctx.check(
        "unsigned_profile_refused",
        !profiles.iter().any(|p| p == UNSIGNED_PROFILE)
            && problems.iter().any(|p| p.contains(UNSIGNED_PROFILE)),
        format!("{UNSIGNED_PROFILE} not loaded, and a problem naming {unsigned}"),
        format!("profiles {profiles:?}; problems {problems:?}"),
        None,
    );

    let out = probe_in_unit(ctx, WORKLOAD);
    expect_probe(ctx, "denied_in_selected_unit", &out, libc::EPERM);
    let out = probe_in_unit(ctx, OTHER);
    expect_probe(ctx, "allowed_in_another_unit", &out, 0);
    let code = open_probe_child();
    ctx.check(
        "allowed_outside_units",
        code.code == Some(0) && code.stdout.contains(SECRET_CONTENT.trim_end()),
        format!("exit 0: {VM_GUEST} open {SECRET} outside any selected unit reads it"),
        code.summary(),
        None,
    );
    let out = probe_in_unit(ctx, UNSIGNED_WORKLOAD);
    expect_probe(ctx, "unsigned_profile_not_enforced", &out, 0);

    // The denial as a journal entry: MESSAGE is the decision's JSON line, with MESSAGE_ID and
    // the ENFORCERD_* fields, sent by the service.
    let mut entries = Vec::new();
    let found = wait_until(Duration::from_secs(20), || {
        entries = decision_entries();
        entries.iter().any(|e| is_expected_denial(e).is_ok())
    });
    let got = if found.is_some() {
        entries
            .iter()
            .find(|e| is_expected_denial(e).is_ok())
            .map(|e| json_str(e, "MESSAGE").to_owned())
            .unwrap_or_default()
    } else if entries.is_empty() {
        format!("no journal entry with MESSAGE_ID={DECISION_MESSAGE_ID}")
    } else {
        entries
            .iter()
            .map(|e| match is_expected_denial(e) {
                Ok(()) => unreachable!("found above"),
                Err(why) => format!("{why}: {}", json_str(e, "MESSAGE")),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    ctx.check(
        "decision_in_journal",
        found.is_some(),
        format!(
            "an entry from {SERVICE} (SYSLOG_IDENTIFIER=enforcerd, MESSAGE_ID={DECISION_MESSAGE_ID}) \
             whose MESSAGE is the JSON decision: file deny, profile {PROFILE}, target {SECRET}, \
             cgroup /system.slice/{WORKLOAD}; ENFORCERD_PROFILE/TARGET/DECISION the same"
        ),
        got,
        None,
    );
    let stray: Vec<String> = entries
        .iter()
        .filter(|e| {
            let cg = decision_field(e, "cgroup");
            cg.ends_with(OTHER) || cg.ends_with(UNSIGNED_WORKLOAD)
        })
        .map(|e| json_str(e, "MESSAGE").to_owned())
        .collect();
    ctx.check(
        "no_decision_for_allowed_opens",
        stray.is_empty(),
        format!("no decision entry for {OTHER} or {UNSIGNED_WORKLOAD}"),
        if stray.is_empty() {
            "none".to_owned()
        } else {
            stray.join("\n")
        },
        None,
    );
    Ok(())
}

/// The open probe from this runner's own cgroup (the test unit, which no profile selects).
fn open_probe_child() -> CommandOutput {
    short(VM_GUEST, &["open", SECRET])
}

/// Every decision entry in the journal (`journalctl -o json MESSAGE_ID=...`).
fn decision_entries() -> Vec<Value> {
    let out = short(
        "journalctl",
        &[
            "-o",
            "json",
            "--no-pager",
            &format!("MESSAGE_ID={DECISION_MESSAGE_ID}"),
        ],
    );
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// A field of the decision JSON line an entry carries in MESSAGE.
fn decision_field(entry: &Value, key: &str) -> String {
    serde_json::from_str::<Value>(json_str(entry, "MESSAGE"))
        .ok()
        .map(|m| match &m[key] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// Whether a journal entry is the denial of the probe in the selected unit, or why not.
fn is_expected_denial(e: &Value) -> Result<(), String> {
    let message: Value = serde_json::from_str(json_str(e, "MESSAGE"))
        .map_err(|err| format!("MESSAGE is not a JSON line ({err})"))?;
    let want = [
        ("hook", "file"),
        ("decision", "deny"),
        ("profile", PROFILE),
        ("target", SECRET),
    ];
    for (k, v) in want {
        if message[k] != v {
            return Err(format!("MESSAGE {k} is {} (want {v})", message[k]));
        }
    }
    let cgroup = format!("/system.slice/{WORKLOAD}");
    if message["cgroup"] != cgroup.as_str() {
        return Err(format!(
            "MESSAGE cgroup is {} (want {cgroup})",
            message["cgroup"]
        ));
    }
    let fields = [
        ("SYSLOG_IDENTIFIER", "enforcerd"),
        ("_SYSTEMD_UNIT", SERVICE),
        ("ENFORCERD_PROFILE", PROFILE),
        ("ENFORCERD_TARGET", SECRET),
        ("ENFORCERD_DECISION", "deny"),
        ("ENFORCERD_HOOK", "file"),
    ];
    for (k, v) in fields {
        if json_str(e, k) != v {
            return Err(format!("{k} is {:?} (want {v})", json_str(e, k)));
        }
    }
    Ok(())
}

/// A capability set's line from /proc/PID/status (`CapEff:\t...`).
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "(missing)".to_owned())
}

/// The mount (from /proc/PID/mountinfo) that holds `path`, and whether it is read-only.
fn mount_of(mountinfo: &str, path: &str) -> Option<(String, bool)> {
    let mut best: Option<(String, bool)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(opts)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let covers = *point == "/" || path == *point || path.starts_with(&format!("{point}/"));
        // A later line for the same or a longer mount point is stacked on top.
        if covers && best.as_ref().is_none_or(|(p, _)| point.len() >= p.len()) {
            best = Some(((*point).to_owned(), opts.split(',').any(|o| o == "ro")));
        }
    }
    best
}

fn hardening(ctx: &mut Ctx) -> Result<()> {
    let pid = main_pid().context("enforcerd.service has no MainPID")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let (eff, prm) = (
        status_field(&status, "CapEff"),
        status_field(&status, "CapPrm"),
    );
    ctx.check(
        "capabilities_only_cap_bpf",
        eff == CAP_BPF_ONLY && prm == CAP_BPF_ONLY,
        format!("CapEff and CapPrm {CAP_BPF_ONLY} (CAP_BPF only)"),
        format!("CapEff {eff} CapPrm {prm}"),
        None,
    );
    let bnd = status_field(&status, "CapBnd");
    ctx.check(
        "bounding_set_only_cap_bpf",
        bnd == CAP_BPF_ONLY,
        format!("CapBnd {CAP_BPF_ONLY}"),
        format!("CapBnd {bnd}"),
        None,
    );
    let nnp = status_field(&status, "NoNewPrivs");
    ctx.check(
        "no_new_privs",
        nnp == "1",
        "NoNewPrivs 1",
        format!("NoNewPrivs {nnp}"),
        None,
    );

    // The unit's sandboxing as systemd applied it, and its effect in the daemon's mount
    // namespace.
    let props = show(
        SERVICE,
        "ProtectSystem,ProtectHome,PrivateTmp,NoNewPrivileges,CapabilityBoundingSet,\
         AmbientCapabilities,ReadWritePaths,RestrictAddressFamilies,SystemCallFilter",
    );
    ctx.note(&format!("systemctl show {SERVICE}: {}", render(&props)));
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("reading /proc/{pid}/mountinfo"))?;
    let protect = props.get("ProtectSystem").cloned().unwrap_or_default();
    // ProtectSystem=yes makes /usr and /boot read-only, full adds /etc, strict the whole tree.
    let must_be_ro: &[&str] = match protect.as_str() {
        "yes" | "true" => &["/usr"],
        "full" => &["/usr", "/etc"],
        "strict" => &["/usr", "/etc", "/opt", "/srv"],
        _ => &[],
    };
    let seen: Vec<String> = must_be_ro
        .iter()
        .map(|p| match mount_of(&mountinfo, p) {
            Some((point, ro)) => format!("{p}: {} (mount {point})", if ro { "ro" } else { "rw" }),
            None => format!("{p}: no mount"),
        })
        .collect();
    ctx.check(
        "protect_system_in_effect",
        !must_be_ro.is_empty()
            && must_be_ro
                .iter()
                .all(|p| mount_of(&mountinfo, p).is_some_and(|(_, ro)| ro)),
        "ProtectSystem=yes|full|strict, and its directories read-only in the daemon's mounts",
        format!("ProtectSystem={protect}; {}", seen.join(", ")),
        None,
    );
    // The unit's stand-in for ProtectKernelTunables (see its comment): sysctls and /sys
    // read-only, the pin directory writable.
    let ro = |p: &str| mount_of(&mountinfo, p).map(|(_, ro)| ro);
    let seen = ["/proc/sys", "/sys", "/sys/fs/bpf"].map(|p| format!("{p}: {:?}", ro(p)));
    ctx.check(
        "kernel_tunables_read_only_pins_writable",
        ro("/proc/sys") == Some(true)
            && ro("/sys") == Some(true)
            && ro("/sys/fs/bpf") == Some(false),
        "/proc/sys and /sys read-only, /sys/fs/bpf writable in the daemon's mounts",
        format!("read-only: {}", seen.join(", ")),
        None,
    );
    let bounding = props
        .get("CapabilityBoundingSet")
        .cloned()
        .unwrap_or_default();
    let mut caps: Vec<String> = bounding.split_whitespace().map(str::to_owned).collect();
    caps.sort();
    let mut want: Vec<String> = UNIT_CAPABILITIES.iter().map(|c| c.to_lowercase()).collect();
    want.sort();
    ctx.check(
        "unit_capability_bounding_set",
        caps == want,
        format!("CapabilityBoundingSet={}", want.join(" ")),
        format!("CapabilityBoundingSet={bounding}"),
        None,
    );
    Ok(())
}

/// The generations pinned under the pin directory, by name.
fn generations() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(PIN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The service is SIGKILLed (as the OOM killer would): its pinned programs keep denying,
/// systemd restarts it (`Restart=on-failure`), the new daemon replaces the pinned generation
/// with its own, and its decisions reach the journal.
fn restart(ctx: &mut Ctx) -> Result<()> {
    let pid = main_pid().context("enforcerd.service has no MainPID")?;
    let before = generations();
    let status = status_json().map_err(anyhow::Error::msg)?;
    let pinned_in = json_str(&status, "pinned_in").to_owned();
    let holds = Path::new(&pinned_in).join("link_file_open").exists();
    ctx.check(
        "pinned_while_running",
        before.len() == 1 && pinned_in == format!("{PIN_DIR}/{}", before[0]) && holds,
        format!("one generation under {PIN_DIR}, the one status names, holding link_file_open"),
        format!("{before:?}; status: {pinned_in}; link_file_open there: {holds}"),
        None,
    );

    let out = short("systemctl", &["kill", "--signal=KILL", SERVICE]);
    ctx.note(&format!(
        "$ systemctl kill --signal=KILL {SERVICE} (MainPID {pid}) -> {}",
        out.status
    ));
    let probe = probe_in_unit(ctx, WORKLOAD);
    expect_probe(ctx, "denied_after_service_sigkill", &probe, libc::EPERM);

    let mut props = BTreeMap::new();
    let restarted = wait_until(ACTIVE_TIMEOUT, || {
        props = show(SERVICE, "ActiveState,SubState,NRestarts,MainPID");
        let new_pid = props.get("MainPID").map(String::as_str);
        props.get("ActiveState").map(String::as_str) == Some("active")
            && props.get("NRestarts").map(String::as_str) == Some("1")
            && new_pid.is_some_and(|p| p != "0" && p != pid.to_string())
    });
    ctx.check(
        "restarted_by_systemd",
        restarted.is_some(),
        format!("active again with NRestarts=1 and a MainPID other than {pid}"),
        render(&props),
        None,
    );
    let after = generations();
    ctx.check(
        "previous_generation_replaced",
        after.len() == 1 && after != before,
        format!("one generation, not {before:?}"),
        format!("{after:?}"),
        None,
    );
    let probe = probe_in_unit(ctx, WORKLOAD);
    expect_probe(ctx, "denied_after_restart", &probe, libc::EPERM);
    let new_pid = main_pid().map(|p| p.to_string()).unwrap_or_default();
    let from_new = wait_until(Duration::from_secs(20), || {
        decision_entries()
            .iter()
            .any(|e| is_expected_denial(e).is_ok() && json_str(e, "_PID") == new_pid)
    });
    ctx.check(
        "reports_resume_after_restart",
        from_new.is_some(),
        format!("the denial in the journal, sent by the new MainPID {new_pid}"),
        if from_new.is_some() { "found" } else { "none" },
        None,
    );
    Ok(())
}

fn gone(ctx: &mut Ctx, check: &str, paths: &[&str]) {
    let present: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    ctx.check(
        check,
        present.is_empty(),
        format!("absent: {}", paths.join(", ")),
        if present.is_empty() {
            "all absent".to_owned()
        } else {
            format!("still present: {}", present.join(", "))
        },
        None,
    );
}

fn purge(ctx: &mut Ctx) -> Result<()> {
    let pid = main_pid();
    let out = run("dpkg", &["--purge", "enforcerd"], Duration::from_secs(300));
    ctx.note(&format!("$ dpkg --purge enforcerd\n{}", out.summary()));
    ctx.check(
        "dpkg_purge_succeeds",
        out.code == Some(0),
        "exit 0",
        out.summary(),
        None,
    );

    let out = short("dpkg-query", &["-W", "-f=${db:Status-Abbrev}", "enforcerd"]);
    // Purged: dpkg no longer knows the package (exit 1), or lists it as not-installed.
    let forgotten = out.code == Some(1) || out.stdout.trim_start().starts_with("un");
    ctx.check(
        "package_forgotten",
        forgotten,
        "dpkg-query: no such package, or un (unknown/not-installed)",
        out.summary(),
        None,
    );

    let files = short(
        "systemctl",
        &["list-unit-files", "--no-legend", "--no-pager", SERVICE],
    );
    let load = show(SERVICE, "LoadState");
    let load = load.get("LoadState").cloned().unwrap_or_default();
    ctx.check(
        "unit_gone",
        files.stdout.trim().is_empty()
            && load == "not-found"
            && !Path::new("/lib/systemd/system/enforcerd.service").exists()
            && !Path::new("/usr/lib/systemd/system/enforcerd.service").exists(),
        "systemctl list-unit-files lists no enforcerd.service, LoadState=not-found, no unit file",
        format!(
            "list-unit-files: {:?}; LoadState={load}",
            files.stdout.trim()
        ),
        None,
    );

    let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    let active = short("systemctl", &["is-active", SERVICE]);
    ctx.check(
        "daemon_stopped",
        !alive && active.stdout.trim() != "active",
        format!("the former MainPID {pid:?} has exited; is-active is not active"),
        format!(
            "MainPID {pid:?} {}; is-active: {}",
            if alive { "still running" } else { "gone" },
            active.stdout.trim()
        ),
        None,
    );
    gone(ctx, "binary_gone", &[ENFORCERD]);
    gone(ctx, "config_gone", &["/etc/enforcerd"]);
    gone(ctx, "state_gone", &["/var/lib/enforcerd"]);
    gone(ctx, "pins_gone", &[PIN_DIR]);

    let out = probe_in_unit(ctx, WORKLOAD);
    expect_probe(ctx, "not_enforced_after_purge", &out, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_are_unique_and_phases_are_named() {
        let mut all: Vec<&str> = CHECKS.iter().flat_map(|(_, c)| c.iter().copied()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        let src = include_str!("package.rs");
        for (phase, checks) in CHECKS {
            assert!(src.contains(&format!("\"{phase}\" =>")), "{phase}");
            for c in *checks {
                assert!(
                    src.matches(&format!("\"{c}\"")).count() >= 2,
                    "{c} never reported"
                );
            }
        }
    }

    #[test]
    fn mounts_by_longest_point_and_last_stacked() {
        let info = "\
22 1 0:2 / / rw,relatime - rootfs rootfs rw
30 22 0:2 /usr /usr ro,relatime - rootfs rootfs rw
31 22 0:2 /etc /etc rw,relatime - rootfs rootfs rw
32 31 0:2 /etc /etc ro,relatime - rootfs rootfs rw
";
        assert_eq!(mount_of(info, "/usr"), Some(("/usr".into(), true)));
        assert_eq!(mount_of(info, "/usr/bin"), Some(("/usr".into(), true)));
        assert_eq!(mount_of(info, "/etc"), Some(("/etc".into(), true)));
        assert_eq!(mount_of(info, "/srv"), Some(("/".into(), false)));
        assert_eq!(mount_of(info, "/usrx"), Some(("/".into(), false)));
    }

    #[test]
    fn proc_status_fields() {
        let s = "Name:\tenforcerd\nCapPrm:\t0000008000000000\nNoNewPrivs:\t1\n";
        assert_eq!(status_field(s, "CapPrm"), CAP_BPF_ONLY);
        assert_eq!(status_field(s, "NoNewPrivs"), "1");
        assert_eq!(status_field(s, "CapEff"), "(missing)");
    }

    #[test]
    fn profiles_select_the_unit_and_deny_the_secret() {
        let y = profile_yaml(PROFILE, WORKLOAD);
        assert!(y.contains("    systemdUnit: enforcerd-vmtest-workload.service\n"));
        assert!(
            y.contains("path: /etc/enforcerd-test-secret, access: [read, write], action: deny")
        );
    }
}
