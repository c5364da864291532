//! System-call helpers for the guest: cgroups, running an operation or an exec in a forked
//! child that first joins a cgroup, sockets, and naming errnos and signals.
//!
//! The runner is single-threaded, so forking is safe.

use anyhow::{Context as _, Result};
use std::ffi::{CStr, CString};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// A child that neither exits nor execs within this time is killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("errno {e}"),
    };
    // SAFETY: strerror returns a pointer to a static (or thread-local) NUL-terminated string.
    let text = unsafe { CStr::from_ptr(libc::strerror(e)) }.to_string_lossy();
    format!("{name} ({text})")
}

pub fn signal_name(s: i32) -> String {
    match s {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        _ => format!("signal {s}"),
    }
}

/// What a child did, as its parent observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The operation succeeded.
    Ok,
    /// The operation (or the execve) failed with this errno.
    Errno(i32),
    /// The exec'd program exited with this status.
    Exited(i32),
    /// The child was terminated by this signal.
    Signaled(i32),
    /// The harness itself could not set the child up (join a cgroup, open a file, ...).
    Harness(String),
}

impl Outcome {
    pub const EPERM: Outcome = Outcome::Errno(libc::EPERM);
    pub const KILLED: Outcome = Outcome::Signaled(libc::SIGKILL);
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Errno(e) => write!(f, "{}", errno_name(*e)),
            Outcome::Exited(c) => write!(f, "exit {c}"),
            Outcome::Signaled(s) => write!(f, "killed by {}", signal_name(*s)),
            Outcome::Harness(m) => write!(f, "harness error: {m}"),
        }
    }
}

/// A finished child: its pid (as seen by the runner) and what happened.
#[derive(Debug, Clone)]
pub struct Run {
    pub pid: i32,
    pub outcome: Outcome,
}

/// A cgroup v2 directory, by its path below the cgroup2 mount (`/exec_allowlist`), which is
/// what profile selectors name.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub rel: String,
}

impl Cgroup {
    /// Creates the cgroup (and its parents) if needed.
    pub fn create(rel: &str) -> Result<Cgroup> {
        let rel = format!("/{}", rel.trim_matches('/'));
        let cg = Cgroup { rel };
        std::fs::create_dir_all(cg.dir())
            .with_context(|| format!("creating cgroup {}", cg.dir().display()))?;
        Ok(cg)
    }

    pub fn child(&self, name: &str) -> Result<Cgroup> {
        Cgroup::create(&format!("{}/{name}", self.rel))
    }

    pub fn dir(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(self.rel.trim_start_matches('/'))
    }

    pub fn procs(&self) -> CString {
        cstring(self.dir().join("cgroup.procs"))
    }
}

pub fn cstring(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_bytes()).expect("path without NUL")
}

/// Writes the calling process's pid into a `cgroup.procs` file.
pub fn join_cgroup(procs: &CStr) -> Result<(), i32> {
    // SAFETY: plain syscalls on a valid NUL-terminated path and a stack buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let pid = libc::getpid().to_string();
        let n = libc::write(fd, pid.as_ptr().cast(), pid.len());
        let e = errno();
        libc::close(fd);
        if n < 0 { Err(e) } else { Ok(()) }
    }
}

/// Messages a child sends its parent over a close-on-exec pipe before it exits or execs.
const MSG_JOIN_FAILED: u8 = b'J';
const MSG_SETUP_FAILED: u8 = b'S';
const MSG_EXEC_FAILED: u8 = b'E';
/// Exit status of a child whose closure panicked.
const EXIT_PANICKED: i32 = 252;

fn send(fd: RawFd, tag: u8, value: i32) {
    let mut buf = [0u8; 5];
    buf[0] = tag;
    buf[1..].copy_from_slice(&value.to_le_bytes());
    // SAFETY: writing a stack buffer to a pipe fd we own.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
    }
}

/// Forks; the child joins `cgroup` (when given) and runs `body`, whose return value is its exit
/// status. The parent collects the child's pipe messages and its wait status.
fn fork_in(
    cgroup: Option<&Cgroup>,
    body: impl FnOnce(RawFd) -> i32,
) -> (i32, Vec<(u8, i32)>, WaitStatus) {
    let procs = cgroup.map(Cgroup::procs);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return (
            0,
            vec![],
            WaitStatus::Harness(format!("pipe2: {}", errno_name(errno()))),
        );
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the runner is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = errno();
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return (
            0,
            vec![],
            WaitStatus::Harness(format!("fork: {}", errno_name(e))),
        );
    }
    if pid == 0 {
        // SAFETY: child side; only our own fds and _exit.
        unsafe {
            libc::close(rd);
            if let Some(p) = &procs
                && let Err(e) = join_cgroup(p)
            {
                send(wr, MSG_JOIN_FAILED, e);
                libc::_exit(126);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(wr)))
                .unwrap_or(EXIT_PANICKED);
            libc::_exit(code);
        }
    }
    // SAFETY: parent side; closing the write end we handed to the child.
    unsafe { libc::close(wr) };
    let msgs = read_messages(rd);
    // SAFETY: closing our read end.
    unsafe { libc::close(rd) };
    (pid, msgs, wait_child(pid, CHILD_TIMEOUT))
}

fn read_messages(rd: RawFd) -> Vec<(u8, i32)> {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut data = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: rd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 64];
        // SAFETY: reading into a stack buffer.
        let r = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        data.extend_from_slice(&buf[..r as usize]);
    }
    data.as_chunks::<5>()
        .0
        .iter()
        .map(|c| (c[0], i32::from_le_bytes([c[1], c[2], c[3], c[4]])))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
    Harness(String),
}

/// Waits for a child, killing it after `timeout`.
pub fn wait_child(pid: i32, timeout: Duration) -> WaitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return WaitStatus::Exited(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return WaitStatus::Signaled(libc::WTERMSIG(status));
            }
            continue;
        }
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return WaitStatus::Harness(format!("waitpid: {}", errno_name(e)));
        }
        if Instant::now() >= deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return WaitStatus::Harness(format!(
                "child did not finish within {} s (killed)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn harness_message(msgs: &[(u8, i32)]) -> Option<String> {
    msgs.iter().find_map(|(tag, v)| match *tag {
        MSG_JOIN_FAILED => Some(format!("joining the cgroup failed: {}", errno_name(*v))),
        MSG_SETUP_FAILED => Some(format!("child setup failed: {}", errno_name(*v))),
        _ => None,
    })
}

/// Runs `op` in a child in `cgroup` (`None`: the runner's own, ungoverned cgroup). The child
/// exits 0 on success and with the errno otherwise.
pub fn op_in(cgroup: Option<&Cgroup>, op: impl FnOnce() -> Result<(), i32>) -> Run {
    let (pid, msgs, status) = fork_in(cgroup, |_| match op() {
        Ok(()) => 0,
        Err(e) => e.clamp(1, 199),
    });
    let outcome = if let Some(m) = harness_message(&msgs) {
        Outcome::Harness(m)
    } else {
        match status {
            WaitStatus::Exited(0) => Outcome::Ok,
            WaitStatus::Exited(EXIT_PANICKED) => Outcome::Harness("child panicked".into()),
            WaitStatus::Exited(c) if c < 200 => Outcome::Errno(c),
            WaitStatus::Exited(c) => Outcome::Exited(c),
            WaitStatus::Signaled(s) => Outcome::Signaled(s),
            WaitStatus::Harness(m) => Outcome::Harness(m),
        }
    };
    Run { pid, outcome }
}

/// How the child hands the program to the kernel.
#[derive(Debug, Clone)]
pub enum How {
    /// `execve(path)`.
    Path(String),
    /// Open `path`, then `fexecve(fd)`.
    Fexecve(String),
    /// Open `path`, then `execve("/proc/self/fd/N")`.
    ProcSelfFd(String),
    /// `execveat(open(dir), name, 0)`.
    Execveat { dir: String, name: String },
}

#[derive(Debug, Clone)]
pub struct Exec {
    pub how: How,
    pub argv: Vec<String>,
    /// Directory to change into first.
    pub cwd: Option<String>,
}

impl Exec {
    pub fn path(path: &str, argv: &[&str]) -> Exec {
        Exec {
            how: How::Path(path.to_owned()),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            cwd: None,
        }
    }

    pub fn how(how: How, argv: &[&str]) -> Exec {
        Exec {
            how,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            cwd: None,
        }
    }

    pub fn in_dir(mut self, dir: &str) -> Exec {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// The command as a human would type it.
    pub fn describe(&self) -> String {
        let prog = match &self.how {
            How::Path(p) => p.clone(),
            How::Fexecve(p) => format!("fexecve(open({p}))"),
            How::ProcSelfFd(p) => format!("/proc/self/fd/N (N = open({p}))"),
            How::Execveat { dir, name } => format!("execveat(open({dir}), {name})"),
        };
        let mut s = String::new();
        if let Some(d) = &self.cwd {
            s.push_str(&format!("cd {d} && "));
        }
        s.push_str(&prog);
        for a in self.argv.iter().skip(1) {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Runs an exec in a child in `cgroup`: `Errno` if execve failed, else the program's exit
/// status or terminating signal.
pub fn exec_in(cgroup: Option<&Cgroup>, exec: &Exec) -> Run {
    let argv: Vec<CString> = exec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()).expect("argv without NUL"))
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env = [c"PATH=/bin".as_ptr(), std::ptr::null()];
    let cwd = exec.cwd.as_deref().map(cstring);
    let (pid, msgs, status) = fork_in(cgroup, |wr| {
        // SAFETY: child side; all pointers point into vectors that outlive the exec attempt.
        unsafe {
            if let Some(d) = &cwd
                && libc::chdir(d.as_ptr()) != 0
            {
                send(wr, MSG_SETUP_FAILED, errno());
                return 125;
            }
            let open_ro = |p: &str| {
                let c = cstring(p);
                let fd = libc::open(c.as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    send(wr, MSG_SETUP_FAILED, errno());
                    libc::_exit(125);
                }
                fd
            };
            match &exec.how {
                How::Path(p) => {
                    let c = cstring(p);
                    libc::execve(c.as_ptr(), argv_ptrs.as_ptr(), env.as_ptr());
                }
                How::Fexecve(p) => {
                    let fd = open_ro(p);
                    libc::fexecve(fd, argv_ptrs.as_ptr(), env.as_ptr());
                }
                How::ProcSelfFd(p) => {
                    let fd = open_ro(p);
                    let c = cstring(format!("/proc/self/fd/{fd}"));
                    libc::execve(c.as_ptr(), argv_ptrs.as_ptr(), env.as_ptr());
                }
                How::Execveat { dir, name } => {
                    let fd = open_ro(dir);
                    let n = cstring(name);
                    libc::syscall(
                        libc::SYS_execveat,
                        fd,
                        n.as_ptr(),
                        argv_ptrs.as_ptr(),
                        env.as_ptr(),
                        0,
                    );
                }
            }
            send(wr, MSG_EXEC_FAILED, errno());
            127
        }
    });
    let outcome = if let Some(m) = harness_message(&msgs) {
        Outcome::Harness(m)
    } else if let Some((_, e)) = msgs.iter().find(|(t, _)| *t == MSG_EXEC_FAILED) {
        Outcome::Errno(*e)
    } else {
        match status {
            WaitStatus::Exited(c) => Outcome::Exited(c),
            WaitStatus::Signaled(s) => Outcome::Signaled(s),
            WaitStatus::Harness(m) => Outcome::Harness(m),
        }
    };
    Run { pid, outcome }
}

/// A child forked into a cgroup that keeps running while the runner goes on (a workload, a
/// poller). It reports through a pipe, one text line per message; the runner reads the lines
/// as they come and collects the rest and the exit status with [`Spawned::finish`]. Dropping
/// an unfinished child kills it.
pub struct Spawned {
    pub pid: i32,
    rd: RawFd,
    buf: Vec<u8>,
    eof: bool,
    reaped: bool,
}

/// Forks a child that joins `cgroup` (when given) and runs `body`, whose return value is its
/// exit status. `body` gets the write end of the report pipe (see [`write_line`]). A child
/// that cannot join the cgroup reports `join-failed <errno>` and exits 126.
pub fn spawn_in(cgroup: Option<&Cgroup>, body: impl FnOnce(RawFd) -> i32) -> Result<Spawned> {
    let procs = cgroup.map(Cgroup::procs);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        anyhow::bail!("pipe2: {}", errno_name(errno()));
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the runner is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = errno();
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        anyhow::bail!("fork: {}", errno_name(e));
    }
    if pid == 0 {
        // SAFETY: child side; only our own fds and _exit.
        unsafe {
            libc::close(rd);
            if let Some(p) = &procs
                && let Err(e) = join_cgroup(p)
            {
                write_line(wr, &format!("join-failed {e}"));
                libc::_exit(126);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(wr)))
                .unwrap_or(EXIT_PANICKED);
            libc::_exit(code);
        }
    }
    // SAFETY: parent side; closing the write end we handed to the child.
    unsafe { libc::close(wr) };
    Ok(Spawned {
        pid,
        rd,
        buf: Vec::new(),
        eof: false,
        reaped: false,
    })
}

/// Writes one line to a report pipe (child side).
pub fn write_line(fd: RawFd, line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writing from a live buffer to a pipe fd we own.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        done += n as usize;
    }
}

impl Spawned {
    /// Reads what the child wrote, waiting at most `timeout` for more; false at end of file.
    fn fill(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: self.rd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(60_000) as i32) };
        if n <= 0 {
            return true;
        }
        let mut chunk = [0u8; 4096];
        // SAFETY: reading into a stack buffer.
        let r = unsafe { libc::read(self.rd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if r < 0 && errno() == libc::EINTR {
            return true;
        }
        if r <= 0 {
            self.eof = true;
            return false;
        }
        self.buf.extend_from_slice(&chunk[..r as usize]);
        true
    }

    /// The next line the child wrote, waiting at most `timeout`; `None` on timeout or when the
    /// child closed its end without writing another line.
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(left) {
                return None;
            }
        }
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: i32) {
        if !self.reaped {
            // SAFETY: signalling our own, not yet reaped child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Waits (at most `timeout`, then kills it) for the child to close its pipe and exit;
    /// returns the lines it wrote that were not read yet, and how it ended.
    pub fn finish(mut self, timeout: Duration) -> (Vec<String>, WaitStatus) {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.fill(left);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_child(self.pid, left.max(Duration::from_millis(100)));
        self.reaped = true;
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        (text.lines().map(str::to_owned).collect(), status)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
        // SAFETY: closing our read end.
        unsafe { libc::close(self.rd) };
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one time base for the runner and its children.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime fills a zeroed timespec.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// `open(path, O_RDONLY)` and close: `Ok` or the errno.
pub fn try_open(path: &CStr) -> Result<(), i32> {
    // SAFETY: plain syscalls on a valid NUL-terminated path.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        libc::close(fd);
    }
    Ok(())
}

// ---- operations a child performs (they return the errno on failure) ----

/// `open(path, flags)`, then close.
pub fn open_op(path: &str, flags: i32) -> Result<(), i32> {
    let c = cstring(path);
    // SAFETY: plain syscalls on a valid path.
    unsafe {
        let fd = libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644);
        if fd < 0 {
            return Err(errno());
        }
        libc::close(fd);
    }
    Ok(())
}

/// `open(path, flags)` and write `data`.
pub fn write_op(path: &str, flags: i32, data: &[u8]) -> Result<(), i32> {
    let c = cstring(path);
    // SAFETY: plain syscalls on a valid path and buffer.
    unsafe {
        let fd = libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = errno();
        libc::close(fd);
        if n < 0 {
            return Err(e);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `socket()` + `connect()`; the socket family follows the address (an IPv4-mapped IPv6
/// address goes through an AF_INET6 socket). A 5 s send timeout bounds a TCP handshake.
pub fn connect_op(addr: SocketAddr, proto: Proto) -> Result<(), i32> {
    let ty = match proto {
        Proto::Tcp => libc::SOCK_STREAM,
        Proto::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: sockaddr structs are plain data, zero-initialised and filled field by field;
    // lengths passed match the struct used.
    unsafe {
        let (family, storage, len) = sockaddr(addr);
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let r = libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len);
        let e = errno();
        libc::close(fd);
        if r != 0 { Err(e) } else { Ok(()) }
    }
}

/// The `sockaddr` for `addr`: (family, storage, length).
pub fn sockaddr(addr: SocketAddr) -> (i32, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            (
                libc::AF_INET,
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            (
                libc::AF_INET6,
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// `statfs(path).f_type`.
pub fn fs_magic(path: &str) -> Result<i64, i32> {
    let c = cstring(path);
    // SAFETY: statfs fills a zeroed struct.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return Err(errno());
        }
        Ok(st.f_type as i64)
    }
}

pub fn uname_release() -> String {
    // SAFETY: uname fills a zeroed struct with NUL-terminated strings.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Makes `command` start with only `keep` (capability numbers) in its bounding set, as a
/// unit's `CapabilityBoundingSet=` does: root's exec then gets no other capability.
pub fn bound_capabilities(command: &mut std::process::Command, keep: Vec<u32>) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only prctl and errno between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for cap in 0..64 {
                // EINVAL: past the kernel's last capability.
                if !keep.contains(&cap)
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && errno() != libc::EINVAL
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_like_a_human_wrote_them() {
        assert_eq!(
            Outcome::EPERM.to_string(),
            "EPERM (Operation not permitted)"
        );
        assert_eq!(Outcome::KILLED.to_string(), "killed by SIGKILL");
        assert_eq!(Outcome::Exited(0).to_string(), "exit 0");
        assert_eq!(Outcome::Ok.to_string(), "ok");
        assert_eq!(errno_name(4095), "errno 4095");
    }

    #[test]
    fn children_report_errno_exit_and_signal() {
        // No cgroup: runs as an ordinary fork on the host.
        assert_eq!(op_in(None, || Ok(())).outcome, Outcome::Ok);
        assert_eq!(
            op_in(None, || open_op("/nonexistent/file", libc::O_RDONLY)).outcome,
            Outcome::Errno(libc::ENOENT)
        );
        let killed = op_in(None, || {
            // SAFETY: the child kills itself.
            unsafe { libc::raise(libc::SIGKILL) };
            Ok(())
        });
        assert_eq!(killed.outcome, Outcome::KILLED);
        let r = exec_in(None, &Exec::path("/nonexistent/prog", &["prog"]));
        assert_eq!(r.outcome, Outcome::Errno(libc::ENOENT));
        if Path::new("/bin/sh").exists() {
            let r = exec_in(None, &Exec::path("/bin/sh", &["sh", "-c", "exit 3"]));
            assert_eq!(r.outcome, Outcome::Exited(3));
            let r = exec_in(
                None,
                &Exec::how(How::ProcSelfFd("/bin/sh".into()), &["sh", "-c", "exit 4"]),
            );
            assert_eq!(r.outcome, Outcome::Exited(4));
        }
    }

    #[test]
    fn spawned_children_report_lines_and_stop_on_a_signal() {
        let mut child = spawn_in(None, |wr| {
            write_line(wr, "ready");
            // SAFETY: waiting for a signal in the child.
            unsafe { libc::pause() };
            0
        })
        .unwrap();
        assert_eq!(
            child.read_line(Duration::from_secs(5)).as_deref(),
            Some("ready")
        );
        child.signal(libc::SIGTERM);
        let (rest, status) = child.finish(Duration::from_secs(5));
        assert!(rest.is_empty());
        assert_eq!(status, WaitStatus::Signaled(libc::SIGTERM));
        let child = spawn_in(None, |wr| {
            write_line(wr, "a");
            write_line(wr, "b");
            3
        })
        .unwrap();
        let (rest, status) = child.finish(Duration::from_secs(5));
        assert_eq!(rest, ["a", "b"]);
        assert_eq!(status, WaitStatus::Exited(3));
        assert_eq!(try_open(c"/nonexistent/file"), Err(libc::ENOENT));
        assert!(monotonic_ns() > 0);
    }

    #[test]
    fn describe_reads_like_a_shell_line() {
        let e = Exec::path("./busybox", &["busybox", "true"]).in_dir("/opt/denied");
        assert_eq!(e.describe(), "cd /opt/denied && ./busybox true");
    }
}

/// One loaded BPF program's run statistics (`bpf_prog_info`; counted only while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub id: u32,
    /// The object's name for it, cut to 15 bytes by the kernel.
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Statistics of every BPF program in the kernel, listed with `BPF_PROG_GET_NEXT_ID` and read
/// with `BPF_OBJ_GET_INFO_BY_FD` (vm-guest runs as root).
pub fn bpf_program_stats() -> Result<Vec<ProgramStats>> {
    // `enum bpf_cmd` in linux/bpf.h.
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // Offsets in `struct bpf_prog_info` (stable UAPI; fields are only ever appended).
    const NAME: usize = 64;
    const RUN_TIME_NS: usize = 192;
    const RUN_CNT: usize = 200;
    let bpf = |cmd: libc::c_long, attr: *mut u8, size: usize| {
        // SAFETY: bpf(2) reads and writes `size` bytes of `attr`.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) }
    };
    let mut stats = Vec::new();
    let mut id = 0u32;
    loop {
        // start_id, next_id, open_flags.
        let mut attr = [id, 0u32, 0u32];
        if bpf(BPF_PROG_GET_NEXT_ID, attr.as_mut_ptr().cast(), 12) != 0 {
            if errno() == libc::ENOENT {
                return Ok(stats);
            }
            anyhow::bail!("BPF_PROG_GET_NEXT_ID: {}", errno_name(errno()));
        }
        id = attr[1];
        // prog_id, next_id, open_flags.
        let mut attr = [id, 0u32, 0u32];
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr().cast(), 12);
        if fd < 0 {
            // Freed meanwhile.
            continue;
        }
        let mut info = [0u8; 256];
        // bpf_fd, info_len, info (pointer).
        let mut attr = [0u8; 16];
        attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        let r = bpf(BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), attr.len());
        // SAFETY: closing the fd just obtained.
        unsafe { libc::close(fd as i32) };
        if r != 0 {
            anyhow::bail!("BPF_OBJ_GET_INFO_BY_FD: {}", errno_name(errno()));
        }
        let u64_at = |at: usize| u64::from_ne_bytes(info[at..at + 8].try_into().expect("8 bytes"));
        let name = &info[NAME..NAME + 16];
        let len = name.iter().position(|&b| b == 0).unwrap_or(16);
        stats.push(ProgramStats {
            id,
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
            run_cnt: u64_at(RUN_CNT),
            run_time_ns: u64_at(RUN_TIME_NS),
        });
    }
}
