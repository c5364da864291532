//! Starting and stopping `enforcerd` inside the VM, and reading its decision lines.
//!
//! The daemon's stdout (one JSON decision per line) and stderr (logs) go to files in /tmp; the
//! runner reads them incrementally, relays new lines to the console, and searches the
//! decisions. Readiness is systemd's protocol: `READY=1` on the datagram socket named by
//! `NOTIFY_SOCKET`.

use super::out::say;
use serde_json::Value;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const ENFORCERD: &str = "/bin/enforcerd";
/// The same daemon built with a different BPF object (the upgrade scenario's "old" version).
pub const ENFORCERD_PREVIOUS: &str = "/bin/enforcerd-previous";
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a decision line may take to travel from the kernel to the daemon's stdout.
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(5);

pub fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by {}", super::sys::signal_name(sig)),
        _ => s.to_string(),
    }
}

/// A file another process appends to, read line by line as it grows.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// Complete lines appended since the last call.
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = File::open(&self.path) else {
            return vec![];
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return vec![];
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return vec![];
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
        }
        lines
    }
}

/// How the daemon decides whether a profile may be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `--allow-unsigned`: profiles are applied without signatures (development mode).
    AllowUnsigned,
    /// `--trusted-keys DIR`: only profiles signed by a key in DIR are applied.
    Keys(PathBuf),
}

impl Trust {
    fn args(&self) -> Vec<std::ffi::OsString> {
        match self {
            Trust::AllowUnsigned => vec!["--allow-unsigned".into()],
            Trust::Keys(dir) => vec!["--trusted-keys".into(), dir.into()],
        }
    }
}

/// How to start the daemon.
pub struct Launch<'a> {
    pub binary: &'a str,
    pub trust: Trust,
    /// More `enforcerd run` arguments.
    pub extra: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Only these capabilities stay in its bounding set, as with a unit's
    /// `CapabilityBoundingSet=` (root's exec then gets no others); `None`: all.
    pub bounding: Option<&'a [u32]>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            binary: ENFORCERD,
            trust: Trust::AllowUnsigned,
            extra: &[],
            env: &[],
            bounding: None,
        }
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub profiles: PathBuf,
    pub ready_after: Duration,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    out: Tail,
    err: Tail,
    /// Whether [`Daemon::relay`] copies stdout (decision lines) too, or only stderr.
    pub relay_stdout: bool,
    /// Leave the daemon's pinned programs enforcing when this handle goes (see
    /// [`Daemon::kill_keeping_pins`]); otherwise they are unpinned so that the next scenario
    /// starts from a kernel nobody enforces on.
    keep_pins: bool,
}

/// Why the daemon did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    pub got: String,
    pub stderr: String,
}

impl Daemon {
    /// Starts `enforcerd run --profiles DIR --allow-unsigned` and waits for READY=1.
    pub fn start(profiles: &Path, tag: &str) -> Result<Daemon, StartFailure> {
        Daemon::start_with(profiles, tag, &Trust::AllowUnsigned, &[], &[])
    }

    /// Starts `enforcerd run --profiles DIR` with the given trust arguments (and `extra`
    /// arguments) and waits for READY=1.
    pub fn start_with(
        profiles: &Path,
        tag: &str,
        trust: &Trust,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, StartFailure> {
        Daemon::launch(
            profiles,
            tag,
            &Launch {
                trust: trust.clone(),
                extra,
                env,
                ..Launch::default()
            },
        )
    }

    /// Starts the daemon as `how` says and waits for READY=1.
    pub fn launch(profiles: &Path, tag: &str, how: &Launch) -> Result<Daemon, StartFailure> {
        let Launch {
            binary,
            trust,
            extra,
            env,
            bounding,
        } = how;
        let bounding = bounding.map(<[u32]>::to_vec);
        let stdout_path = PathBuf::from(format!("/tmp/enforcerd-{tag}.out"));
        let stderr_path = PathBuf::from(format!("/tmp/enforcerd-{tag}.err"));
        let sock_path = PathBuf::from(format!("/run/notify-{tag}.sock"));
        let fail = |got: String, stderr: String| StartFailure { got, stderr };
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).map_err(|e| {
            fail(
                format!("cannot bind {}: {e}", sock_path.display()),
                String::new(),
            )
        })?;
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let (stdout, stderr) = match (File::create(&stdout_path), File::create(&stderr_path)) {
            (Ok(o), Ok(e)) => (o, e),
            _ => {
                return Err(fail(
                    "cannot create the daemon's output files".into(),
                    String::new(),
                ));
            }
        };
        let mut trust_args = trust.args();
        trust_args.extend(extra.iter().map(std::ffi::OsString::from));
        say(&format!(
            "$ NOTIFY_SOCKET={} {binary} run --profiles {} {} &",
            sock_path.display(),
            profiles.display(),
            trust_args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let started = Instant::now();
        let mut command = Command::new(binary);
        if let Some(keep) = bounding {
            super::sys::bound_capabilities(&mut command, keep);
        }
        let child = command
            .args(["run", "--profiles"])
            .arg(profiles)
            .args(&trust_args)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| fail(format!("cannot run {binary}: {e}"), String::new()))?;
        let mut d = Daemon {
            child: Some(child),
            profiles: profiles.to_owned(),
            ready_after: Duration::ZERO,
            out: Tail::new(stdout_path.clone()),
            err: Tail::new(stderr_path.clone()),
            stdout_path,
            stderr_path,
            relay_stdout: true,
            keep_pins: false,
        };
        let mut buf = [0u8; 4096];
        loop {
            d.relay();
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l.trim() == "READY=1") {
                        d.ready_after = started.elapsed();
                        let _ = std::fs::remove_file(&sock_path);
                        d.relay();
                        return Ok(d);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    let stderr = d.stderr_tail(40);
                    return Err(fail(format!("reading the notify socket: {e}"), stderr));
                }
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                d.child = None;
                d.relay();
                let _ = std::fs::remove_file(&sock_path);
                return Err(fail(
                    format!("enforcerd {} before READY=1", describe_status(status)),
                    d.stderr_tail(40),
                ));
            }
            if started.elapsed() > READY_TIMEOUT {
                d.relay();
                let _ = std::fs::remove_file(&sock_path);
                return Err(fail(
                    format!("no READY=1 within {} s", READY_TIMEOUT.as_secs()),
                    d.stderr_tail(40),
                ));
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGHUP (reload the profiles directory). False if the daemon is not running.
    pub fn sighup(&self) -> bool {
        match self.pid() {
            // SAFETY: signalling our own child.
            Some(pid) => unsafe { libc::kill(pid as i32, libc::SIGHUP) == 0 },
            None => false,
        }
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Bytes the daemon has written to stdout so far.
    pub fn stdout_len(&self) -> u64 {
        std::fs::metadata(&self.stdout_path).map_or(0, |m| m.len())
    }

    /// CPU time (user + system) the daemon has used, in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// Removes the file holding the daemon's decision lines (after a run that produced many).
    pub fn discard_stdout(&mut self) {
        let _ = std::fs::write(&self.stdout_path, b"");
        self.out = Tail::new(self.stdout_path.clone());
    }

    /// Copies new daemon output to the console.
    pub fn relay(&mut self) {
        for l in self.err.new_lines() {
            say(&format!("  enforcerd stderr| {l}"));
        }
        if self.relay_stdout {
            for l in self.out.new_lines() {
                say(&format!("  enforcerd stdout| {l}"));
            }
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        tail_lines(&self.stderr(), n)
    }

    /// Every JSON object the daemon printed on stdout so far, with its line as printed.
    pub fn decision_lines(&self) -> Vec<(String, Value)> {
        self.stdout()
            .lines()
            .filter_map(|l| {
                let v = serde_json::from_str::<Value>(l.trim()).ok()?;
                v.is_object().then(|| (l.to_owned(), v))
            })
            .collect()
    }

    pub fn decisions(&self) -> Vec<Value> {
        self.decision_lines().into_iter().map(|(_, v)| v).collect()
    }

    /// Waits for a decision matching `pred`.
    pub fn wait_decision(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.wait_decision_line(timeout, pred).map(|(_, v)| v)
    }

    /// Waits for a decision matching `pred`; returns it with its line as printed.
    pub fn wait_decision_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<(String, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.relay();
            if let Some(found) = self.decision_lines().into_iter().find(|(_, v)| pred(v)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as the OOM killer would, and forget the daemon: its pinned programs stay
    /// attached. Returns how it ended.
    pub fn kill_keeping_pins(mut self) -> String {
        self.keep_pins = true;
        let Some(mut child) = self.child.take() else {
            return "had already exited".into();
        };
        let _ = child.kill();
        let ended = child
            .wait()
            .map_or_else(|e| format!("wait: {e}"), describe_status);
        self.relay();
        ended
    }

    /// SIGTERM, then wait up to 10 s; then unpin what it left enforcing (`enforcerd detach`),
    /// unless `keep_pins`. `Ok` when it exited 0 (and the detach worked).
    pub fn stop(self) -> Result<Duration, String> {
        self.stop_keeping(false)
    }

    /// [`Daemon::stop`] that leaves the pinned programs enforcing.
    pub fn stop_keeping_pins(self) -> Result<Duration, String> {
        self.stop_keeping(true)
    }

    fn stop_keeping(mut self, keep_pins: bool) -> Result<Duration, String> {
        // On the error paths below, Drop unpins (unless `keep_pins`).
        self.keep_pins = keep_pins;
        let Some(mut child) = self.child.take() else {
            return Err("the daemon had already exited".into());
        };
        let started = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.relay();
                    if !status.success() {
                        return Err(format!("{} after SIGTERM", describe_status(status)));
                    }
                    let took = started.elapsed();
                    if keep_pins {
                        return Ok(took);
                    }
                    self.keep_pins = true;
                    return detach_pins().map(|()| took);
                }
                Ok(None) if started.elapsed() < STOP_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.relay();
                    return Err(format!(
                        "still running {} s after SIGTERM (killed)",
                        STOP_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.relay();
        }
        if !self.keep_pins {
            let _ = detach_pins();
        }
    }
}

/// `enforcerd detach`: unpins every generation a stopped daemon left enforcing.
pub fn detach_pins() -> Result<(), String> {
    let out = run_command(ENFORCERD, &["detach"]);
    if out.code == Some(0) {
        Ok(())
    } else {
        Err(format!("enforcerd detach: {}", out.summary()))
    }
}

pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `enforcerd status --json` of the running daemon, parsed; `Err` carries the exit status and
/// output when it failed or did not print one JSON object.
pub fn status_json() -> Result<Value, String> {
    let out = run_command(ENFORCERD, &["status", "--json"]);
    if out.code != Some(0) {
        return Err(format!(
            "enforcerd status --json: {}\n{}{}",
            out.status, out.stdout, out.stderr
        )
        .trim_end()
        .to_owned());
    }
    match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(format!(
            "enforcerd status --json printed no single JSON object:\n{}",
            out.stdout.trim_end()
        )),
    }
}

/// Output of a short command (e.g. `enforcerd check`).
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// The exit status and everything the command printed, for a check's `got`.
    pub fn summary(&self) -> String {
        format!("{}\n{}{}", self.status, self.stdout, self.stderr)
            .trim_end()
            .to_owned()
    }
}

/// Runs a command to completion (killed after 60 s), capturing its output.
pub fn run_command(program: &str, args: &[&str]) -> CommandOutput {
    run_command_as(program, args, None)
}

/// `run_command`, as user `uid` when given.
pub fn run_command_as(program: &str, args: &[&str], uid: Option<u32>) -> CommandOutput {
    let mut command = Command::new(program);
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
    }
    command.args(args);
    run_prepared(command, program)
}

/// Runs a prepared command (at most 60 s) and collects its output.
pub fn run_prepared(command: Command, program: &str) -> CommandOutput {
    run_prepared_within(command, program, Duration::from_secs(60))
}

/// [`run_prepared`], killed after `timeout`.
pub fn run_prepared_within(
    mut command: Command,
    program: &str,
    timeout: Duration,
) -> CommandOutput {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tag = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = PathBuf::from(format!("/tmp/cmd-{tag}.out"));
    let err_path = PathBuf::from(format!("/tmp/cmd-{tag}.err"));
    let files = (File::create(&out_path), File::create(&err_path));
    let (Ok(out), Ok(err)) = files else {
        return CommandOutput {
            status: "cannot create output files in /tmp".into(),
            code: None,
            stdout: String::new(),
            stderr: String::new(),
        };
    };
    let spawned = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn();
    let (status, code) = match spawned {
        Err(e) => (format!("cannot run {program}: {e}"), None),
        Ok(mut child) => {
            let started = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(s)) => break (describe_status(s), s.code()),
                    Ok(None) if started.elapsed() < timeout => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break (
                            format!("did not finish within {} s (killed)", timeout.as_secs()),
                            None,
                        );
                    }
                }
            }
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    CommandOutput {
        status,
        code,
        stdout,
        stderr,
    }
}
