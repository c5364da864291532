//! The line protocol between the guest (`/init` and `vm-guest`, writing to the serial console)
//! and the host harness (reading the console).
//!
//! Every protocol line starts with `@@`; everything else on the console is free-form log text.
//!
//! ```text
//! @@INIT                                   /init started (the kernel has booted)
//! @@GUEST-START {"kernel":"6.1.0-56-amd64","mode":"test"}
//! @@SCENARIO-START exec_allowlist
//! @@RESULT {"scenario":"exec_allowlist","check":"relative_path_denied","ok":false,
//!           "expected":"EPERM (Operation not permitted)","got":"exit 0"}   (one line)
//! @@SCENARIO-SKIP connect no IPv6 on lo
//! @@SCENARIO-END exec_allowlist
//! @@BENCH {"case":"c","op":"open","iterations":20000,"median_ns":10712,"p99_ns":11020,
//!          "mean_ns":10790}                   (one line; `vm-tests bench` only)
//! @@BENCH-PROG {"case":"c","op":"open","program":"file_open","runs":22010,"ns_per_run":812}
//! @@DONE failed                            vm-guest finished: "ok" or "failed"
//! @@GUEST-EXIT 1                           /init: vm-guest's exit status, just before poweroff
//! ```
//!
//! Kernel messages can share the console with the guest's output, so the parser looks for the
//! `@@` marker anywhere in a line and ignores what precedes it.

use crate::bench::{BenchResult, ProgramCost};
use serde::{Deserialize, Serialize};
use std::fmt;

pub const MARKER: &str = "@@";

/// One check's verdict, as the guest reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub scenario: String,
    pub check: String,
    pub ok: bool,
    pub expected: String,
    pub got: String,
    /// Extra context for a human (timings, the daemon's stderr, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the guest says about itself when the runner starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStart {
    pub kernel: String,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Init,
    GuestStart(GuestStart),
    ScenarioStart(String),
    ScenarioSkip { scenario: String, reason: String },
    ScenarioEnd(String),
    Result(CheckResult),
    Bench(BenchResult),
    BenchProgram(ProgramCost),
    Done(String),
    GuestExit(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: String,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed protocol line ({}): {}",
            self.reason, self.line
        )
    }
}

impl Event {
    /// The line (without newline) that carries this event.
    pub fn to_line(&self) -> String {
        match self {
            Event::Init => "@@INIT".to_owned(),
            Event::GuestStart(g) => format!("@@GUEST-START {}", json(g)),
            Event::ScenarioStart(s) => format!("@@SCENARIO-START {s}"),
            Event::ScenarioSkip { scenario, reason } => {
                format!("@@SCENARIO-SKIP {scenario} {}", one_line(reason))
            }
            Event::ScenarioEnd(s) => format!("@@SCENARIO-END {s}"),
            Event::Result(r) => format!("@@RESULT {}", json(r)),
            Event::Bench(b) => format!("@@BENCH {}", json(b)),
            Event::BenchProgram(p) => format!("@@BENCH-PROG {}", json(p)),
            Event::Done(status) => format!("@@DONE {status}"),
            Event::GuestExit(code) => format!("@@GUEST-EXIT {code}"),
        }
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("protocol types always serialize")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Parses one console line. `None` for ordinary log text, `Some(Err)` for a line that carries
/// the marker but cannot be understood (a harness or guest bug, or a line the kernel's own
/// output cut in two).
pub fn parse_line(raw: &str) -> Option<Result<Event, ParseError>> {
    let line = raw.trim_end_matches(['\r', '\n']);
    let start = line.find(MARKER)?;
    let body = &line[start + MARKER.len()..];
    let (tag, rest) = match body.split_once(' ') {
        Some((t, r)) => (t, r.trim()),
        None => (body.trim(), ""),
    };
    let err = |reason: &str| {
        Some(Err(ParseError {
            line: line[start..].to_owned(),
            reason: reason.to_owned(),
        }))
    };
    let name = |rest: &str| -> Option<String> {
        let name = rest.split_whitespace().next()?;
        Some(name.to_owned())
    };
    let event = match tag {
        "INIT" => Event::Init,
        "GUEST-START" => match serde_json::from_str(rest) {
            Ok(g) => Event::GuestStart(g),
            Err(e) => return err(&format!("bad GUEST-START JSON: {e}")),
        },
        "SCENARIO-START" => match name(rest) {
            Some(n) => Event::ScenarioStart(n),
            None => return err("SCENARIO-START without a name"),
        },
        "SCENARIO-END" => match name(rest) {
            Some(n) => Event::ScenarioEnd(n),
            None => return err("SCENARIO-END without a name"),
        },
        "SCENARIO-SKIP" => match rest.split_once(' ') {
            Some((n, reason)) => Event::ScenarioSkip {
                scenario: n.to_owned(),
                reason: reason.trim().to_owned(),
            },
            None if !rest.is_empty() => Event::ScenarioSkip {
                scenario: rest.to_owned(),
                reason: String::new(),
            },
            None => return err("SCENARIO-SKIP without a name"),
        },
        "RESULT" => match serde_json::from_str(rest) {
            Ok(r) => Event::Result(r),
            Err(e) => return err(&format!("bad RESULT JSON: {e}")),
        },
        "BENCH" => match serde_json::from_str(rest) {
            Ok(b) => Event::Bench(b),
            Err(e) => return err(&format!("bad BENCH JSON: {e}")),
        },
        "BENCH-PROG" => match serde_json::from_str(rest) {
            Ok(p) => Event::BenchProgram(p),
            Err(e) => return err(&format!("bad BENCH-PROG JSON: {e}")),
        },
        "DONE" => Event::Done(rest.to_owned()),
        "GUEST-EXIT" => match rest.parse() {
            Ok(code) => Event::GuestExit(code),
            Err(_) => return err("GUEST-EXIT without a numeric status"),
        },
        _ => return err("unknown tag"),
    };
    Some(Ok(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool) -> CheckResult {
        CheckResult {
            scenario: "exec_allowlist".into(),
            check: "relative_path_denied".into(),
            ok,
            expected: "EPERM (Operation not permitted)".into(),
            got: "exit 0\nsecond line".into(),
            detail: None,
        }
    }

    #[test]
    fn every_event_round_trips() {
        let events = [
            Event::Init,
            Event::GuestStart(GuestStart {
                kernel: "6.1.0-56-amd64".into(),
                mode: "test".into(),
            }),
            Event::ScenarioStart("files".into()),
            Event::ScenarioSkip {
                scenario: "connect".into(),
                reason: "no IPv6 on lo".into(),
            },
            Event::ScenarioEnd("files".into()),
            Event::Result(result(false)),
            Event::Result(CheckResult {
                detail: Some("ready in 1.2 s".into()),
                ..result(true)
            }),
            Event::Bench(BenchResult {
                case: "c".into(),
                op: "open".into(),
                stats: crate::bench::Stats {
                    iterations: 20_000,
                    median_ns: 10_712,
                    p99_ns: 11_020,
                    mean_ns: 10_790,
                },
            }),
            Event::BenchProgram(ProgramCost {
                case: "c".into(),
                op: "open".into(),
                program: "file_open".into(),
                runs: 22_010,
                ns_per_run: 812,
            }),
            Event::Done("ok".into()),
            Event::GuestExit(3),
        ];
        for e in events {
            let line = e.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(parse_line(&line), Some(Ok(e)));
        }
    }

    #[test]
    fn ordinary_log_lines_are_not_events() {
        assert_eq!(parse_line("[    1.234] Run /init as init process"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn marker_after_kernel_noise_and_crlf_is_found() {
        let line = format!(
            "[  3.1] random: crng init done{}\r\n",
            Event::Init.to_line()
        );
        assert_eq!(parse_line(&line), Some(Ok(Event::Init)));
        assert_eq!(
            parse_line("@@SCENARIO-START  files  \r"),
            Some(Ok(Event::ScenarioStart("files".into())))
        );
    }

    #[test]
    fn result_line_from_the_documented_example() {
        let line = r#"@@RESULT {"scenario":"exec_allowlist","check":"relative_path_denied","ok":false,"expected":"EPERM","got":"exit 0"}"#;
        let Some(Ok(Event::Result(r))) = parse_line(line) else {
            panic!("not parsed")
        };
        assert_eq!(r.scenario, "exec_allowlist");
        assert_eq!(r.check, "relative_path_denied");
        assert!(!r.ok);
        assert_eq!(r.expected, "EPERM");
        assert_eq!(r.got, "exit 0");
        assert_eq!(r.detail, None);
    }

    #[test]
    fn broken_lines_are_errors_not_silence() {
        for line in [
            r#"@@RESULT {"scenario":"x","check":"y","ok":tr"#,
            "@@RESULT",
            "@@GUEST-EXIT lots",
            "@@SCENARIO-START",
            "@@WHATEVER 1",
        ] {
            assert!(matches!(parse_line(line), Some(Err(_))), "{line}");
        }
    }

    #[test]
    fn skip_without_reason() {
        assert_eq!(
            parse_line("@@SCENARIO-SKIP connect"),
            Some(Ok(Event::ScenarioSkip {
                scenario: "connect".into(),
                reason: String::new()
            }))
        );
    }
}
