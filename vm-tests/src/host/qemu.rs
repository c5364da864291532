//! Boots one kernel under QEMU (TCG) with the initramfs, records its serial console and feeds it
//! to a [`Collector`].

use super::report::{Collector, KernelReport, VmEnd, not_started};
use crate::protocol::Event;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Console text that means the kernel is dying. After one shows up, the VM gets a few seconds
/// to print the rest of the trace, then is killed.
const CRASH_MARKERS: &[&str] = &["Kernel panic", "BUG:"];
const CRASH_GRACE: Duration = Duration::from_secs(3);
/// After `/init` reported the runner's exit status, powering off must not take longer.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

pub struct VmSpec {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command line words (`enforcerd.mode=test` ...).
    pub append: Vec<String>,
    pub timeout: Duration,
    pub log_path: PathBuf,
    pub memory_mb: u32,
    /// More QEMU arguments (`-icount ...` for benchmark boots).
    pub qemu_args: Vec<String>,
}

impl VmSpec {
    pub fn command(&self) -> Command {
        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        for a in &self.append {
            append.push(' ');
            append.push_str(a);
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-m")
        .arg(self.memory_mb.to_string())
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initrd)
        .arg("-append")
        .arg(append)
        .args(&self.qemu_args);
        cmd
    }
}

/// Kills QEMU if the harness leaves early for any reason.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

enum Msg {
    Line(String),
    Eof,
}

fn shell_quote(args: impl Iterator<Item = String>) -> String {
    args.map(|a| {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// Boots the VM and returns its report. `on_line` sees every console line (the demo prints
/// them; the test run prints progress on events).
pub fn run(
    spec: &VmSpec,
    expected: &[&str],
    mut on_line: impl FnMut(&str, Option<&Event>, Duration),
) -> KernelReport {
    let started = Instant::now();
    if !spec.kernel.exists() {
        return not_started(
            &spec.name,
            expected,
            &format!(
                "kernel image {} not found (tools/setup downloads the matrix)",
                spec.kernel.display()
            ),
        );
    }
    let mut log = match File::create(&spec.log_path) {
        Ok(f) => f,
        Err(e) => {
            return not_started(
                &spec.name,
                expected,
                &format!("cannot create {}: {e}", spec.log_path.display()),
            );
        }
    };
    let mut cmd = spec.command();
    let header = format!(
        "# {}",
        shell_quote(
            std::iter::once(cmd.get_program().to_string_lossy().into_owned())
                .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        )
    );
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut guard = match child {
        Ok(c) => Guard(c),
        Err(e) => {
            return not_started(
                &spec.name,
                expected,
                &format!("cannot run qemu-system-x86_64 (package qemu-system-x86): {e}"),
            );
        }
    };
    let stdout = guard.0.stdout.take().expect("piped");
    let mut stderr = guard.0.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if tx.send(Msg::Line(line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Eof);
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut collector = Collector::new(&spec.name, expected);
    let _ = writeln!(log, "{header}");
    collector.line(&header, Duration::ZERO);

    let deadline = started + spec.timeout;
    let mut kill_at: Option<Instant> = None;
    let mut crash: Option<String> = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = crash.is_none();
            break;
        }
        if kill_at.is_some_and(|k| now >= k) {
            break;
        }
        let until = kill_at.map_or(deadline, |k| k.min(deadline));
        match rx.recv_timeout(until - now) {
            Ok(Msg::Line(line)) => {
                let elapsed = started.elapsed();
                let _ = writeln!(log, "{line}");
                let event = collector.line(&line, elapsed);
                if event.is_none()
                    && crash.is_none()
                    && !line.contains(crate::protocol::MARKER)
                    && let Some(m) = CRASH_MARKERS.iter().find(|m| line.contains(**m))
                {
                    let at = line.find(m).unwrap_or(0);
                    crash = Some(line[at..].trim().to_owned());
                    kill_at = Some(Instant::now() + CRASH_GRACE);
                }
                if let Some(Event::GuestExit(_)) = event {
                    kill_at.get_or_insert(Instant::now() + POWEROFF_GRACE);
                }
                on_line(&line, event.as_ref(), elapsed);
            }
            Ok(Msg::Eof) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(guard);
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    if !qemu_stderr.trim().is_empty() {
        let _ = writeln!(log, "---- qemu stderr ----\n{}", qemu_stderr.trim_end());
    }
    let total = started.elapsed();
    let end = if let Some(c) = crash {
        VmEnd::Crashed(c)
    } else if timed_out {
        VmEnd::TimedOut(spec.timeout)
    } else if !collector.booted() && !qemu_stderr.trim().is_empty() {
        VmEnd::NotStarted(format!("qemu: {}", qemu_stderr.trim()))
    } else {
        VmEnd::Exited
    };
    let mut report = collector.finish(end, total);
    report.log_path = Some(spec.log_path.clone());
    report
}
