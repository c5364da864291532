//! Turns one VM's console output into per-scenario pass/fail with readable failures, and
//! renders the report across kernels.

use crate::protocol::{CheckResult, Event, parse_line};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Log lines shown before a failing check.
const CONTEXT_LINES: usize = 14;
/// Log lines shown when a VM died or hung.
const TAIL_LINES: usize = 30;

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// QEMU exited on its own (the guest powered off).
    Exited,
    /// A kernel panic / BUG marker was seen.
    Crashed(String),
    TimedOut(Duration),
    /// The VM could not be started (missing kernel image, QEMU failed, ...).
    NotStarted(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kernel: String,
    pub scenario: String,
    pub check: String,
    pub expected: String,
    pub got: String,
    pub detail: Option<String>,
    /// Log lines leading up to the failure (already rendered for humans).
    pub context: Vec<String>,
    /// 1-based line of the failure in the serial log, if it came from one.
    pub log_line: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScenarioTally {
    pub name: String,
    pub passed: usize,
    pub failed: usize,
    pub started: bool,
    pub finished: bool,
    pub skipped: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KernelReport {
    pub kernel: String,
    pub release: Option<String>,
    pub log_path: Option<PathBuf>,
    pub boot_time: Option<Duration>,
    pub total_time: Duration,
    pub end: VmEnd,
    pub guest_exit: Option<i32>,
    pub done: Option<String>,
    pub scenarios: Vec<ScenarioTally>,
    pub failures: Vec<Failure>,
}

impl KernelReport {
    pub fn passed(&self) -> usize {
        self.scenarios.iter().map(|s| s.passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
}

/// Consumes console lines as they arrive.
pub struct Collector {
    kernel: String,
    line_no: usize,
    recent: VecDeque<String>,
    current: Option<String>,
    report: KernelReport,
}

impl Collector {
    pub fn new(kernel: &str, expected: &[&str]) -> Self {
        Self {
            kernel: kernel.to_owned(),
            line_no: 0,
            recent: VecDeque::new(),
            current: None,
            report: KernelReport {
                kernel: kernel.to_owned(),
                release: None,
                log_path: None,
                boot_time: None,
                total_time: Duration::ZERO,
                end: VmEnd::Exited,
                guest_exit: None,
                done: None,
                scenarios: expected
                    .iter()
                    .map(|n| ScenarioTally {
                        name: (*n).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
                failures: Vec::new(),
            },
        }
    }

    fn tally(&mut self, name: &str) -> &mut ScenarioTally {
        if let Some(i) = self.report.scenarios.iter().position(|s| s.name == name) {
            return &mut self.report.scenarios[i];
        }
        self.report.scenarios.push(ScenarioTally {
            name: name.to_owned(),
            ..Default::default()
        });
        self.report.scenarios.last_mut().expect("just pushed")
    }

    fn remember(&mut self, display: String) {
        if self.recent.len() == TAIL_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(display);
    }

    fn context(&self, n: usize) -> Vec<String> {
        let skip = self.recent.len().saturating_sub(n);
        self.recent.iter().skip(skip).cloned().collect()
    }

    /// Whether `/init` has started.
    pub fn booted(&self) -> bool {
        self.report.boot_time.is_some()
    }

    /// The event the line carried, if any. `elapsed` is the time since QEMU started.
    pub fn line(&mut self, raw: &str, elapsed: Duration) -> Option<Event> {
        self.line_no += 1;
        let text = raw.trim_end_matches(['\r', '\n']);
        match parse_line(text) {
            None => {
                self.remember(text.to_owned());
                None
            }
            Some(Err(e)) => {
                let scenario = self.current.clone().unwrap_or_else(|| "-".into());
                self.remember(text.to_owned());
                self.report.failures.push(Failure {
                    kernel: self.kernel.clone(),
                    scenario,
                    check: "protocol".into(),
                    expected: "a well-formed @@ line".into(),
                    got: e.to_string(),
                    detail: None,
                    context: self.context(CONTEXT_LINES),
                    log_line: Some(self.line_no),
                });
                None
            }
            Some(Ok(event)) => {
                self.event(&event, text, elapsed);
                Some(event)
            }
        }
    }

    fn event(&mut self, event: &Event, text: &str, elapsed: Duration) {
        match event {
            Event::Init => {
                self.report.boot_time.get_or_insert(elapsed);
                self.remember(text.to_owned());
            }
            Event::GuestStart(g) => {
                self.report.release = Some(g.kernel.clone());
                self.remember(text.to_owned());
            }
            Event::ScenarioStart(name) => {
                self.current = Some(name.clone());
                self.tally(name).started = true;
                self.remember(format!("--- scenario {name}"));
            }
            Event::ScenarioEnd(name) => {
                self.tally(name).finished = true;
                self.current = None;
                self.remember(format!("--- end of {name}"));
            }
            Event::ScenarioSkip { scenario, reason } => {
                let t = self.tally(scenario);
                t.finished = true;
                t.skipped = Some(reason.clone());
                self.remember(format!("--- skipped {scenario}: {reason}"));
            }
            Event::Result(r) => {
                if r.ok {
                    self.tally(&r.scenario).passed += 1;
                    self.remember(format!("PASS {}/{}", r.scenario, r.check));
                } else {
                    self.tally(&r.scenario).failed += 1;
                    let context = self.context(CONTEXT_LINES);
                    self.remember(format!("FAIL {}/{}: got {}", r.scenario, r.check, r.got));
                    self.report
                        .failures
                        .push(failure(&self.kernel, r, context, self.line_no));
                }
            }
            // Figures, not verdicts: `vm-tests bench` collects them from the line callback.
            Event::Bench(_) | Event::BenchProgram(_) => {}
            Event::Done(status) => {
                self.report.done = Some(status.clone());
                self.remember(text.to_owned());
            }
            Event::GuestExit(code) => {
                self.report.guest_exit = Some(*code);
                self.remember(text.to_owned());
            }
        }
    }

    /// Closes the run: every scenario the guest did not finish is a failure.
    pub fn finish(mut self, end: VmEnd, total_time: Duration) -> KernelReport {
        let why = match &end {
            VmEnd::Crashed(marker) => format!("the VM crashed: {marker}"),
            VmEnd::TimedOut(t) => format!("the VM timed out after {} s", t.as_secs()),
            VmEnd::NotStarted(why) => format!("the VM did not start: {why}"),
            VmEnd::Exited if self.report.done.is_none() => match self.report.guest_exit {
                Some(code) => format!("vm-guest exited with status {code} before @@DONE"),
                None => "the VM powered off before @@DONE".to_owned(),
            },
            VmEnd::Exited => "the guest finished without running it".to_owned(),
        };
        let tail = self.context(TAIL_LINES);
        let unfinished: Vec<String> = self
            .report
            .scenarios
            .iter()
            .filter(|s| !s.finished)
            .map(|s| s.name.clone())
            .collect();
        for name in unfinished {
            let started = self.tally(&name).started;
            self.tally(&name).failed += 1;
            self.report.failures.push(Failure {
                kernel: self.kernel.clone(),
                scenario: name.clone(),
                check: if started {
                    "(did not finish)".into()
                } else {
                    "(did not run)".into()
                },
                expected: "the scenario runs to its end".into(),
                got: why.clone(),
                detail: None,
                context: tail.clone(),
                log_line: None,
            });
        }
        if matches!(end, VmEnd::Exited)
            && self.report.done.is_some()
            && !matches!(self.report.guest_exit, Some(0 | 1))
        {
            let got = match self.report.guest_exit {
                Some(c) => format!("exit status {c}"),
                None => "no @@GUEST-EXIT line".into(),
            };
            self.report.failures.push(Failure {
                kernel: self.kernel.clone(),
                scenario: "-".into(),
                check: "(runner exit status)".into(),
                expected: "0 (all passed) or 1 (some failed)".into(),
                got,
                detail: None,
                context: tail,
                log_line: None,
            });
        }
        self.report.end = end;
        self.report.total_time = total_time;
        self.report
    }
}

fn failure(kernel: &str, r: &CheckResult, context: Vec<String>, line: usize) -> Failure {
    Failure {
        kernel: kernel.to_owned(),
        scenario: r.scenario.clone(),
        check: r.check.clone(),
        expected: r.expected.clone(),
        got: r.got.clone(),
        detail: r.detail.clone(),
        context,
        log_line: Some(line),
    }
}

/// A report for a kernel that never booted.
pub fn not_started(kernel: &str, expected: &[&str], why: &str) -> KernelReport {
    Collector::new(kernel, expected).finish(VmEnd::NotStarted(why.to_owned()), Duration::ZERO)
}

/// A line diff of expected vs got: `- ` lines only expected, `+ ` lines only got, `  ` both.
pub fn diff_lines(expected: &str, got: &str) -> Vec<String> {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The per-kernel block: timing and one line per scenario.
pub fn render_kernel(r: &KernelReport) -> String {
    let mut s = String::new();
    let release = r.release.as_deref().unwrap_or("release unknown");
    let boot = r.boot_time.map(secs).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "== {} ({release}): boot {boot}, total {}, {} passed, {} failed",
        r.kernel,
        secs(r.total_time),
        r.passed(),
        r.failed()
    );
    match &r.end {
        VmEnd::Exited => {}
        VmEnd::Crashed(m) => {
            let _ = writeln!(s, "   VM CRASHED: {m}");
        }
        VmEnd::TimedOut(t) => {
            let _ = writeln!(s, "   VM TIMED OUT after {} s", t.as_secs());
        }
        VmEnd::NotStarted(why) => {
            let _ = writeln!(s, "   VM NOT STARTED: {why}");
        }
    }
    for t in &r.scenarios {
        let state = if let Some(reason) = &t.skipped {
            format!("skipped: {reason}")
        } else if t.failed == 0 && t.finished {
            format!("ok ({} checks)", t.passed)
        } else {
            format!("{} passed, {} FAILED", t.passed, t.failed)
        };
        let _ = writeln!(s, "   {:<32} {state}", t.name);
    }
    if let Some(p) = &r.log_path {
        let _ = writeln!(s, "   serial log: {}", p.display());
    }
    s
}

/// One failure: the diff, extra detail, and the log leading up to it.
pub fn render_failure(f: &Failure, log_path: Option<&PathBuf>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "--- FAIL [{}] {}/{}", f.kernel, f.scenario, f.check);
    if f.expected.contains('\n') || f.got.contains('\n') {
        let _ = writeln!(s, "    diff (- expected, + got):");
        for l in diff_lines(&f.expected, &f.got) {
            let _ = writeln!(s, "      {l}");
        }
    } else {
        let _ = writeln!(s, "    expected: {}", f.expected);
        let _ = writeln!(s, "    got:      {}", f.got);
    }
    if let Some(d) = &f.detail {
        let _ = writeln!(s, "    detail:");
        for l in d.lines() {
            let _ = writeln!(s, "      {l}");
        }
    }
    if !f.context.is_empty() {
        match (log_path, f.log_line) {
            (Some(p), Some(n)) => {
                let _ = writeln!(s, "    log before it ({}:{n}):", p.display());
            }
            (Some(p), None) => {
                let _ = writeln!(s, "    end of the log ({}):", p.display());
            }
            _ => {
                let _ = writeln!(s, "    log:");
            }
        }
        for l in &f.context {
            let _ = writeln!(s, "      | {l}");
        }
    }
    s
}

/// The closing section: every kernel's failures, then `N passed, M failed`.
pub fn render_summary(reports: &[KernelReport]) -> String {
    let mut s = String::new();
    let failed: usize = reports.iter().map(KernelReport::failed).sum();
    let passed: usize = reports.iter().map(KernelReport::passed).sum();
    if failed > 0 {
        let _ = writeln!(s, "\n===== failures =====");
        for r in reports {
            for f in &r.failures {
                s.push_str(&render_failure(f, r.log_path.as_ref()));
            }
        }
        let _ = writeln!(s);
    }
    for r in reports {
        let _ = writeln!(
            s,
            "{:<10} boot {:>7}  total {:>7}  {} passed, {} failed",
            r.kernel,
            r.boot_time.map(secs).unwrap_or_else(|| "-".into()),
            secs(r.total_time),
            r.passed(),
            r.failed()
        );
    }
    let _ = writeln!(s, "{passed} passed, {failed} failed");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GuestStart;

    fn result(scenario: &str, check: &str, ok: bool, expected: &str, got: &str) -> String {
        Event::Result(CheckResult {
            scenario: scenario.into(),
            check: check.into(),
            ok,
            expected: expected.into(),
            got: got.into(),
            detail: None,
        })
        .to_line()
    }

    fn feed(c: &mut Collector, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            c.line(l, Duration::from_secs(i as u64));
        }
    }

    #[test]
    fn a_clean_run() {
        let mut c = Collector::new("debian12", &["environment", "files"]);
        feed(
            &mut c,
            &[
                "[    0.000] Linux version 6.1".into(),
                "@@INIT".into(),
                Event::GuestStart(GuestStart {
                    kernel: "6.1.0-56-amd64".into(),
                    mode: "test".into(),
                })
                .to_line(),
                "@@SCENARIO-START environment".into(),
                result("environment", "bpf_lsm_active", true, "bpf", "bpf"),
                "@@SCENARIO-END environment".into(),
                "@@SCENARIO-START files".into(),
                result("files", "a", true, "ok", "ok"),
                result("files", "b", true, "ok", "ok"),
                "@@SCENARIO-END files".into(),
                "@@DONE ok".into(),
                "@@GUEST-EXIT 0".into(),
            ],
        );
        let r = c.finish(VmEnd::Exited, Duration::from_secs(20));
        assert_eq!((r.passed(), r.failed()), (3, 0));
        assert_eq!(r.boot_time, Some(Duration::from_secs(1)));
        assert_eq!(r.release.as_deref(), Some("6.1.0-56-amd64"));
        let text = render_kernel(&r);
        assert!(
            text.contains("environment") && text.contains("ok (2 checks)"),
            "{text}"
        );
        assert!(render_summary(&[r]).ends_with("3 passed, 0 failed\n"));
    }

    #[test]
    fn a_failed_check_carries_its_diff_and_context() {
        let mut c = Collector::new("sid", &["exec_allowlist"]);
        feed(
            &mut c,
            &[
                "@@SCENARIO-START exec_allowlist".into(),
                "# exec ./busybox in /opt/denied".into(),
                result(
                    "exec_allowlist",
                    "relative_path_denied",
                    false,
                    "EPERM (Operation not permitted)",
                    "exit 0",
                ),
                "@@SCENARIO-END exec_allowlist".into(),
                "@@DONE failed".into(),
                "@@GUEST-EXIT 1".into(),
            ],
        );
        let r = c.finish(VmEnd::Exited, Duration::from_secs(5));
        assert_eq!((r.passed(), r.failed()), (0, 1));
        let f = &r.failures[0];
        assert_eq!(f.check, "relative_path_denied");
        assert_eq!(f.log_line, Some(3));
        assert_eq!(
            f.context,
            [
                "--- scenario exec_allowlist",
                "# exec ./busybox in /opt/denied"
            ]
        );
        let text = render_summary(&[r]);
        assert!(
            text.contains("--- FAIL [sid] exec_allowlist/relative_path_denied"),
            "{text}"
        );
        assert!(
            text.contains("expected: EPERM (Operation not permitted)"),
            "{text}"
        );
        assert!(text.contains("got:      exit 0"), "{text}");
        assert!(text.contains("| # exec ./busybox in /opt/denied"), "{text}");
        assert!(text.ends_with("0 passed, 1 failed\n"), "{text}");
    }

    #[test]
    fn a_crash_fails_every_unfinished_scenario() {
        let mut c = Collector::new("debian13", &["environment", "files", "connect"]);
        feed(
            &mut c,
            &[
                "@@SCENARIO-START environment".into(),
                result("environment", "x", true, "", ""),
                "@@SCENARIO-END environment".into(),
                "@@SCENARIO-START files".into(),
                "[   9.1] Kernel panic - not syncing: Fatal exception".into(),
            ],
        );
        let r = c.finish(
            VmEnd::Crashed("Kernel panic - not syncing: Fatal exception".into()),
            Duration::from_secs(9),
        );
        assert_eq!((r.passed(), r.failed()), (1, 2));
        assert_eq!(r.failures[0].scenario, "files");
        assert_eq!(r.failures[0].check, "(did not finish)");
        assert_eq!(r.failures[1].check, "(did not run)");
        assert!(r.failures[0].got.contains("Kernel panic"));
        assert!(
            r.failures[0]
                .context
                .iter()
                .any(|l| l.contains("Kernel panic"))
        );
        let text = render_kernel(&r);
        assert!(text.contains("VM CRASHED"), "{text}");
    }

    #[test]
    fn powering_off_without_done_and_odd_exit_codes_fail() {
        let mut c = Collector::new("debian12", &["environment"]);
        feed(&mut c, &["@@GUEST-EXIT 2".into()]);
        let r = c.finish(VmEnd::Exited, Duration::from_secs(1));
        assert_eq!(r.failed(), 1);
        assert!(r.failures[0].got.contains("status 2"), "{:?}", r.failures);

        let mut c = Collector::new("debian12", &[]);
        feed(&mut c, &["@@DONE ok".into(), "@@GUEST-EXIT 101".into()]);
        let r = c.finish(VmEnd::Exited, Duration::from_secs(1));
        assert_eq!(r.failures[0].check, "(runner exit status)");
    }

    #[test]
    fn malformed_protocol_lines_are_failures() {
        let mut c = Collector::new("debian12", &[]);
        feed(
            &mut c,
            &[
                "@@SCENARIO-START files".into(),
                r#"@@RESULT {"scenario":"files","#.into(),
                "@@SCENARIO-END files".into(),
                "@@DONE ok".into(),
                "@@GUEST-EXIT 0".into(),
            ],
        );
        let r = c.finish(VmEnd::Exited, Duration::from_secs(1));
        assert_eq!(r.failed(), 1);
        assert_eq!(r.failures[0].scenario, "files");
        assert_eq!(r.failures[0].check, "protocol");
    }

    #[test]
    fn missing_kernel_fails_each_selected_scenario() {
        let r = not_started("sid", &["environment", "files"], "kernel image not found");
        assert_eq!(r.failed(), 2);
        let s = render_summary(&[r]);
        assert!(s.ends_with("0 passed, 2 failed\n"), "{s}");
        assert!(s.contains("kernel image not found"), "{s}");
    }

    #[test]
    fn skipped_scenarios_are_neither_passed_nor_failed() {
        let mut c = Collector::new("debian12", &["connect"]);
        feed(
            &mut c,
            &[
                "@@SCENARIO-SKIP connect no IPv6".into(),
                "@@DONE ok".into(),
                "@@GUEST-EXIT 0".into(),
            ],
        );
        let r = c.finish(VmEnd::Exited, Duration::from_secs(1));
        assert_eq!((r.passed(), r.failed()), (0, 0));
        assert!(render_kernel(&r).contains("skipped: no IPv6"));
    }

    #[test]
    fn diff_marks_only_the_changed_lines() {
        assert_eq!(
            diff_lines("a\nb\nc", "a\nx\nc"),
            ["  a", "+ x", "- b", "  c"]
        );
        assert_eq!(diff_lines("", "new"), ["+ new"]);
        assert_eq!(diff_lines("old", ""), ["- old"]);
        assert_eq!(
            diff_lines("same\nlines", "same\nlines"),
            ["  same", "  lines"]
        );
    }

    #[test]
    fn multi_line_values_render_as_a_diff() {
        let f = Failure {
            kernel: "k".into(),
            scenario: "s".into(),
            check: "c".into(),
            expected: "line 1\nline 2".into(),
            got: "line 1\nline two".into(),
            detail: Some("stderr: boom".into()),
            context: vec![],
            log_line: None,
        };
        let text = render_failure(&f, None);
        assert!(text.contains("diff (- expected, + got)"), "{text}");
        assert!(
            text.contains("- line 2") && text.contains("+ line two"),
            "{text}"
        );
        assert!(text.contains("stderr: boom"), "{text}");
    }
}
