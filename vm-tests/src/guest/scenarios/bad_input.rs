//! Bad input: each malformed profile is refused with `FILE:LINE:COL: message` by `enforcerd
//! check` and by the daemon, nothing from it is applied, and the valid profile next to it is
//! still enforced. A profile with 10,000 file rules loads and its rules hold.

use crate::guest::daemon::{ENFORCERD, run_command, run_command_as};
use crate::guest::fixtures::{self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL, SECRET};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, open_op};
use anyhow::{Context as _, Result};
use std::fmt::Write as _;

/// One malformed profile: its name, and the line (as it appears in the file) that is wrong.
struct Bad {
    kind: &'static str,
    /// Replaces the marker line in the template below.
    bad_line: &'static str,
}

const BAD: &[Bad] = &[
    Bad {
        kind: "unknown_key",
        bad_line: "  colour: blue",
    },
    Bad {
        kind: "bad_cidr",
        bad_line: "        - {cidr: 10.0.0.300/8, ports: [5432], protocol: tcp}",
    },
    Bad {
        kind: "relative_path",
        bad_line: "      - {path: srv/secret/key, access: [read], action: deny}",
    },
    Bad {
        kind: "non_normalized_path",
        bad_line: "      - {path: /srv/data/../secret/key, access: [read], action: deny}",
    },
];

/// A profile that would deny reading the secret in its own cgroup, with `bad_line` placed in
/// the section where it belongs.
fn template(kind: &str, bad_line: &str) -> String {
    let (files_extra, net_extra, spec_extra) = match kind {
        "bad_cidr" => ("", format!("{bad_line}\n"), ""),
        "unknown_key" => ("", String::new(), bad_line),
        _ => (bad_line, String::new(), ""),
    };
    let mut s = format!(
        "apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: {}
  serial: 1
spec:
  selector:
    cgroup: /bad_input_{kind}
  mode: enforce
  onViolation: deny
",
        kind.replace('_', "-")
    );
    if !spec_extra.is_empty() {
        let _ = writeln!(s, "{spec_extra}");
    }
    s.push_str(EXEC_ALLOW_ALL);
    let _ = writeln!(
        s,
        "  files:
    default: allow
    rules:
      - {{path: {SECRET}, access: [read, write], action: deny}}"
    );
    if !files_extra.is_empty() {
        let _ = writeln!(s, "{files_extra}");
    }
    let _ = writeln!(
        s,
        "  network:
    connect:
      default: allow
      allow:
        - {{cidr: 127.0.0.0/8}}"
    );
    s.push_str(&net_extra);
    s
}

/// 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l == needle).map_or(0, |i| i + 1)
}

/// Removes ANSI colour sequences (a log formatter may add them).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `LINE` of every `...FILE_NAME:LINE:COL:` in `text`.
fn positions(text: &str, file_name: &str) -> Vec<(usize, usize)> {
    let text = strip_ansi(text);
    let needle = format!("{file_name}:");
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().and_then(|l| l.parse::<usize>().ok());
        let col = parts.next().and_then(|c| c.parse::<usize>().ok());
        if let (Some(l), Some(c)) = (line, col) {
            found.push((l, c));
        }
    }
    found
}

pub fn bad_profiles_are_refused_and_valid_ones_still_enforced(ctx: &mut Ctx) -> Result<()> {
    fixtures::srv_tree()?;
    let dir = fixtures::profile_dir("bad_input")?;
    let good_cg = Cgroup::create("/bad_input")?;
    let good = fixtures::profile(
        "good",
        &good_cg.rel,
        "enforce",
        "deny",
        &format!(
            "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {SECRET}, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
        ),
    );
    let good_path = fixtures::write_profile(&dir, "good.yaml", &good)?;
    let good_path = good_path.to_str().context("path")?.to_owned();

    let out = run_command(ENFORCERD, &["check", "--allow-unsigned", &good_path]);
    ctx.check(
        "check_accepts_valid_profile",
        out.code == Some(0),
        "exit 0",
        format!("{}\n{}{}", out.status, out.stdout, out.stderr)
            .trim_end()
            .to_owned(),
        None,
    );

    // Without privileges the kernel cannot enforce: exit 3 and a message that says so.
    let out = run_command_as(
        ENFORCERD,
        &[
            "run",
            "--profiles",
            dir.to_str().context("path")?,
            "--allow-unsigned",
        ],
        Some(65534),
    );
    ctx.check(
        "run_as_non_root_exits_3",
        out.code == Some(3)
            && out
                .stderr
                .contains("enforcerd must run as root (effective uid is 65534)"),
        "exit 3, stderr: enforcerd must run as root (effective uid is 65534) ...",
        format!("{}\n{}", out.status, out.stderr.trim_end()),
        None,
    );

    let mut bad_files = Vec::new();
    for bad in BAD {
        let file_name = format!("{}.yaml", bad.kind.replace('_', "-"));
        let text = template(bad.kind, bad.bad_line);
        let line = line_of(&text, bad.bad_line);
        let path = fixtures::write_profile(&dir, &file_name, &text)?;
        let path = path.to_str().context("path")?.to_owned();
        ctx.note(&format!(
            "{file_name}: the error is on line {line}: {}",
            bad.bad_line.trim()
        ));

        let out = run_command(ENFORCERD, &["check", "--allow-unsigned", &path]);
        let output = format!("{}{}", out.stdout, out.stderr);
        ctx.check(
            &format!("check_refuses_{}", bad.kind),
            out.code == Some(1),
            "exit 1",
            format!("{}\n{}", out.status, output.trim_end())
                .trim_end()
                .to_owned(),
            None,
        );
        let found = positions(&output, &file_name);
        ctx.check(
            &format!("check_reports_{}_position", bad.kind),
            found.iter().any(|(l, _)| *l == line),
            format!("{path}:{line}:COL: message"),
            if output.trim().is_empty() {
                "no output".to_owned()
            } else {
                output.trim_end().to_owned()
            },
            None,
        );
        bad_files.push((bad.kind, file_name, line));
    }

    ctx.start_daemon(&dir, "daemon_ready_despite_bad_profiles")?;
    let r = ctx.op(Some(&good_cg), &format!("open({SECRET})"), || {
        open_op(SECRET, libc::O_RDONLY)
    });
    ctx.expect(
        "valid_profile_enforced_next_to_bad_ones",
        &Outcome::EPERM,
        &r,
    );
    let stderr = ctx.daemon.as_ref().map(|d| d.stderr()).unwrap_or_default();
    for (kind, file_name, line) in &bad_files {
        let found = positions(&stderr, file_name);
        ctx.check(
            &format!("daemon_reports_{kind}_file_and_position"),
            found.iter().any(|(l, _)| l == line),
            format!("stderr names {file_name}:{line}:COL:"),
            if stderr.contains(file_name.as_str()) {
                stderr
                    .lines()
                    .filter(|l| l.contains(file_name.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                format!("{file_name} not mentioned on stderr")
            },
            None,
        );
        let cg = Cgroup::create(&format!("/bad_input_{kind}"))?;
        let r = ctx.op(
            Some(&cg),
            &format!("open({SECRET}) under refused profile"),
            || open_op(SECRET, libc::O_RDONLY),
        );
        ctx.expect(
            &format!("nothing_applied_from_{kind}_profile"),
            &Outcome::Ok,
            &r,
        );
    }
    ctx.stop_daemon("daemon_stops_on_sigterm");

    ten_thousand_file_rules_load_and_hold(ctx)
}

fn ten_thousand_file_rules_load_and_hold(ctx: &mut Ctx) -> Result<()> {
    const N: usize = 10_000;
    let cg = Cgroup::create("/many_rules")?;
    let dir = fixtures::profile_dir("many_rules")?;
    let mut rules = String::with_capacity(N * 64);
    for i in 0..N {
        let _ = writeln!(
            rules,
            "      - {{path: /srv/many/f{i:04}, access: [read, write], action: deny}}"
        );
    }
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
{rules}{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "many-rules.yaml",
        &fixtures::profile("many-rules", &cg.rel, "enforce", "deny", &body),
    )?;
    for f in ["f0000", "f5000", "f9999", "other"] {
        fixtures::write(&format!("/srv/many/{f}"), "x\n", 0o644)?;
    }
    ctx.note(&format!("a profile with {N} exact file rules"));
    ctx.start_daemon(&dir, "ten_thousand_rules_profile_loads")?;
    for (f, expected) in [
        ("f0000", Outcome::EPERM),
        ("f5000", Outcome::EPERM),
        ("f9999", Outcome::EPERM),
        ("other", Outcome::Ok),
    ] {
        let path = format!("/srv/many/{f}");
        let r = ctx.op(Some(&cg), &format!("open({path})"), || {
            open_op(&path, libc::O_RDONLY)
        });
        let check = if f == "other" {
            "ten_thousand_rules_unlisted_file_allowed".to_owned()
        } else {
            format!("ten_thousand_rules_{f}_denied")
        };
        ctx.expect(&check, &expected, &r);
    }
    ctx.stop_daemon("ten_thousand_rules_daemon_stops_on_sigterm");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_line_is_in_its_template_exactly_once() {
        for bad in BAD {
            let text = template(bad.kind, bad.bad_line);
            assert_eq!(
                text.lines().filter(|l| *l == bad.bad_line).count(),
                1,
                "{}",
                bad.kind
            );
            assert!(line_of(&text, bad.bad_line) > 8, "{}", bad.kind);
        }
        // The unknown key sits directly under spec:, the CIDR in the connect allow list.
        let t = template("unknown_key", BAD[0].bad_line);
        assert!(
            t.contains("  onViolation: deny\n  colour: blue\n  exec:"),
            "{t}"
        );
        let t = template("bad_cidr", BAD[1].bad_line);
        assert!(t.ends_with("        - {cidr: 127.0.0.0/8}\n        - {cidr: 10.0.0.300/8, ports: [5432], protocol: tcp}\n"), "{t}");
    }

    #[test]
    fn positions_are_found_with_or_without_directories_and_colours() {
        let out = "/tmp/profiles/bad_input/bad-cidr.yaml:23:17: invalid CIDR\n";
        assert_eq!(positions(out, "bad-cidr.yaml"), [(23, 17)]);
        let coloured = "\u{1b}[31mERROR\u{1b}[0m bad-cidr.yaml:23:17: invalid";
        assert_eq!(positions(coloured, "bad-cidr.yaml"), [(23, 17)]);
        assert!(positions("bad-cidr.yaml: oops", "bad-cidr.yaml").is_empty());
    }
}
