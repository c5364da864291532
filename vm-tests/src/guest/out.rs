//! Console output and the per-scenario check recorder.

use super::daemon::{Daemon, Launch, Trust};
use super::sys::{Cgroup, Exec, Outcome, Run, exec_in, op_in};
use crate::protocol::{CheckResult, Event};
use std::io::Write as _;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd as _;

/// Writes one line to the console with a single write(2), so lines from the runner, its
/// children and the daemon's relay do not interleave mid-line.
pub fn say(line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    // SAFETY: fd 1 stays open for the runner's lifetime; ManuallyDrop keeps it open.
    let mut out = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let _ = out.write_all(buf.as_bytes());
}

pub fn emit(event: &Event) {
    say(&event.to_line());
}

/// Records the checks of one scenario.
pub struct Ctx {
    pub scenario: &'static str,
    pub passed: usize,
    pub failed: usize,
    /// The daemon the scenario runs, if any; its output is relayed after each check.
    pub daemon: Option<Daemon>,
}

impl Ctx {
    pub fn new(scenario: &'static str) -> Ctx {
        Ctx {
            scenario,
            passed: 0,
            failed: 0,
            daemon: None,
        }
    }

    /// Runs a scenario's body; why it did not run to its end (an error or a panic), if so.
    pub fn run_to_end(
        &mut self,
        body: impl FnOnce(&mut Ctx) -> anyhow::Result<()>,
    ) -> Option<String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(self))) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(p) => Some(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
        }
    }

    /// Runs a scenario's body with [`Ctx::run_to_end`]; a body that stopped early becomes the
    /// failed check `aborted` (with the daemon's stderr). Then stops a daemon left running.
    pub fn run_recording_abort(
        &mut self,
        aborted: &str,
        expected: &str,
        body: impl FnOnce(&mut Ctx) -> anyhow::Result<()>,
    ) {
        if let Some(problem) = self.run_to_end(body) {
            let detail = self
                .daemon_stderr_tail()
                .map(|s| format!("enforcerd stderr:\n{s}"));
            self.check(aborted, false, expected, problem, detail);
        }
        self.stop_daemon_quietly();
    }

    /// A human-readable line in the log (context for failures).
    pub fn note(&self, msg: &str) {
        say(&format!("[{}] {msg}", self.scenario));
    }

    pub fn check(
        &mut self,
        check: &str,
        ok: bool,
        expected: impl Into<String>,
        got: impl Into<String>,
        detail: Option<String>,
    ) -> bool {
        self.relay();
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        emit(&Event::Result(CheckResult {
            scenario: self.scenario.to_owned(),
            check: check.to_owned(),
            ok,
            expected: expected.into(),
            got: got.into(),
            detail,
        }));
        ok
    }

    /// Compares an outcome with what was expected.
    pub fn expect(&mut self, check: &str, expected: &Outcome, got: &Run) -> bool {
        let detail = match &got.outcome {
            Outcome::Harness(_) => self.daemon_stderr_tail(),
            _ => None,
        };
        self.check(
            check,
            &got.outcome == expected,
            expected.to_string(),
            got.outcome.to_string(),
            detail,
        )
    }

    /// Runs an operation in a child in `cgroup` and logs it.
    pub fn op(
        &mut self,
        cgroup: Option<&Cgroup>,
        what: &str,
        op: impl FnOnce() -> Result<(), i32>,
    ) -> Run {
        let run = op_in(cgroup, op);
        self.note(&format!(
            "{what} [cgroup {}, pid {}] -> {}",
            cgroup.map_or("/ (ungoverned)", |c| c.rel.as_str()),
            run.pid,
            run.outcome
        ));
        run
    }

    /// Runs an exec in a child in `cgroup` and logs it.
    pub fn exec(&mut self, cgroup: Option<&Cgroup>, exec: &Exec) -> Run {
        let run = exec_in(cgroup, exec);
        self.note(&format!(
            "$ {} [cgroup {}, pid {}] -> {}",
            exec.describe(),
            cgroup.map_or("/ (ungoverned)", |c| c.rel.as_str()),
            run.pid,
            run.outcome
        ));
        run
    }

    /// Relays what the daemon printed since the last call to the console.
    pub fn relay(&mut self) {
        if let Some(d) = &mut self.daemon {
            d.relay();
        }
    }

    pub fn daemon_stderr_tail(&self) -> Option<String> {
        self.daemon.as_ref().map(|d| d.stderr_tail(20))
    }

    /// Starts the daemon on a profile directory and records the `check` that it became ready.
    /// An error means the rest of the scenario cannot run.
    pub fn start_daemon(&mut self, profiles: &std::path::Path, check: &str) -> anyhow::Result<()> {
        self.start_daemon_with(profiles, &Trust::AllowUnsigned, &[], &[], check)
    }

    /// [`Ctx::start_daemon`] with more `enforcerd run` arguments.
    pub fn start_daemon_args(
        &mut self,
        profiles: &std::path::Path,
        extra: &[&str],
        check: &str,
    ) -> anyhow::Result<()> {
        self.start_daemon_with(profiles, &Trust::AllowUnsigned, extra, &[], check)
    }

    /// [`Ctx::start_daemon_args`] with environment variables for the daemon.
    pub fn start_daemon_env(
        &mut self,
        profiles: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
        check: &str,
    ) -> anyhow::Result<()> {
        self.start_daemon_with(profiles, &Trust::AllowUnsigned, extra, env, check)
    }

    /// The running daemon's pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(super::daemon::Daemon::pid)
    }

    /// Every JSON line the running daemon printed on stdout so far.
    pub fn daemon_decisions(&self) -> Vec<serde_json::Value> {
        self.daemon
            .as_ref()
            .map(super::daemon::Daemon::decisions)
            .unwrap_or_default()
    }

    /// [`Ctx::start_daemon`] without `--allow-unsigned`: only profiles signed by a key in
    /// `trusted_keys` are applied.
    pub fn start_daemon_trusting(
        &mut self,
        profiles: &std::path::Path,
        trusted_keys: &std::path::Path,
        check: &str,
    ) -> anyhow::Result<()> {
        self.start_daemon_with(
            profiles,
            &Trust::Keys(trusted_keys.to_owned()),
            &[],
            &[],
            check,
        )
    }

    fn start_daemon_with(
        &mut self,
        profiles: &std::path::Path,
        trust: &Trust,
        extra: &[&str],
        env: &[(&str, &str)],
        check: &str,
    ) -> anyhow::Result<()> {
        let how = Launch {
            trust: trust.clone(),
            extra,
            env,
            ..Launch::default()
        };
        self.launch_daemon(profiles, &how, check)
    }

    /// Starts the daemon as `how` says (see [`Ctx::start_daemon`]); a running one is stopped
    /// first, unless it was taken with [`Ctx::take_daemon`].
    pub fn launch_daemon(
        &mut self,
        profiles: &std::path::Path,
        how: &Launch,
        check: &str,
    ) -> anyhow::Result<()> {
        self.stop_daemon_quietly();
        let tag = format!("{}-{check}", self.scenario);
        match Daemon::launch(profiles, &tag, how) {
            Ok(d) => {
                let after = d.ready_after;
                self.daemon = Some(d);
                self.note(&format!(
                    "enforcerd ready after {:.2} s",
                    after.as_secs_f64()
                ));
                self.check(
                    check,
                    true,
                    format!(
                        "READY=1 within {} s",
                        super::daemon::READY_TIMEOUT.as_secs()
                    ),
                    format!("READY=1 after {:.2} s", after.as_secs_f64()),
                    None,
                );
                Ok(())
            }
            Err(f) => {
                self.check(
                    check,
                    false,
                    format!(
                        "READY=1 within {} s",
                        super::daemon::READY_TIMEOUT.as_secs()
                    ),
                    f.got.clone(),
                    Some(format!("enforcerd stderr:\n{}", f.stderr)),
                );
                anyhow::bail!("enforcerd did not become ready: {}", f.got)
            }
        }
    }

    /// SIGTERM the daemon and record the `check` that it exited 0 within 10 s.
    pub fn stop_daemon(&mut self, check: &str) {
        let Some(d) = self.daemon.take() else {
            return;
        };
        let stderr = d.stderr_tail(20);
        let expected = format!(
            "exit 0 within {} s of SIGTERM",
            super::daemon::STOP_TIMEOUT.as_secs()
        );
        match d.stop() {
            Ok(t) => {
                self.check(
                    check,
                    true,
                    expected,
                    format!("exit 0 after {:.2} s", t.as_secs_f64()),
                    None,
                );
            }
            Err(got) => {
                self.check(
                    check,
                    false,
                    expected,
                    got,
                    Some(format!("enforcerd stderr:\n{stderr}")),
                );
            }
        }
    }

    /// Kills a daemon left running (after a failed scenario), without recording anything.
    /// The running daemon, to stop or kill it by hand.
    pub fn take_daemon(&mut self) -> Option<Daemon> {
        self.daemon.take()
    }

    pub fn stop_daemon_quietly(&mut self) {
        if let Some(d) = self.daemon.take() {
            drop(d);
        }
    }
}
