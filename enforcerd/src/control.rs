//! The control socket (`/run/enforcerd/enforcerd.sock`): one JSON request line in, one JSON
//! response line out. Root-only: the socket's directory is 0700, the socket 0600, and the
//! daemon also checks the peer's uid.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::net::unix::OwnedWriteHalf;

pub use crate::reconcile::Outcome;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// The recent decision lines; with `follow`, then every new one until the client goes.
    /// Answered with raw decision JSON lines (and `{"lagged":N}` when a follower fell behind
    /// and missed N lines), not with a `Response`.
    Events {
        follow: bool,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Status(Box<Status>),
    Error { message: String },
}

/// What `enforcerd status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// RFC 3339.
    pub started: String,
    /// `uname -r` of the running kernel.
    pub kernel: String,
    pub programs: Vec<ProgramStatus>,
    /// The directory this daemon's programs, links and maps are pinned in.
    pub pinned_in: String,
    /// What stopping the daemon does to enforcement: `keep` or `detach`.
    pub on_stop: String,
    pub profiles_dir: String,
    /// `--allow-unsigned` is in effect.
    pub unsigned_allowed: bool,
    /// `--audit` is in effect.
    pub audit_all: bool,
    pub last_reload: Option<ReloadStatus>,
    pub profiles: Vec<ProfileStatus>,
    pub hooks: Vec<HookCounters>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub hook: String,
    pub attached: bool,
    pub verified_instructions: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// RFC 3339.
    pub at: String,
    /// `start`, `SIGHUP` or `profiles directory changed`.
    pub trigger: String,
    pub duration_ms: u64,
    /// No file was refused.
    pub ok: bool,
    /// Which profiles were added, replaced, removed, left unchanged or kept, and every refusal.
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileStatus {
    pub name: String,
    pub serial: u64,
    pub sha256: String,
    pub mode: String,
    pub on_violation: String,
    pub source: String,
    pub cgroups: Vec<String>,
    /// Cgroup paths the kernel binds to this profile the instant they are created.
    #[serde(default)]
    pub pending: Vec<String>,
    pub decisions: DecisionCounts,
}

/// Non-allow decisions reported for one profile since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionCounts {
    pub deny: u64,
    pub kill: u64,
    pub audit: u64,
}

/// The kernel's per-hook counters (all profiles).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookCounters {
    pub hook: String,
    pub allowed: u64,
    pub denied: u64,
    pub killed: u64,
    pub audited: u64,
    /// Records lost because the ring buffer was full.
    pub dropped: u64,
    /// Identical decisions folded into an aggregation entry instead of a record (reported in
    /// summary lines).
    #[serde(default)]
    pub aggregated: u64,
    /// Records the daemon read. Per hook, denied + killed + audited == reported + aggregated +
    /// dropped once the reader has caught up.
    #[serde(default)]
    pub reported: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("permission denied on {0}: the control socket is root-only; run this command as root")]
    PermissionDenied(String),
    #[error("enforcerd is not running (nothing listens on {0})")]
    NotRunning(String),
    #[error("talking to enforcerd on {socket}: {error}")]
    Io { socket: String, error: String },
    #[error("enforcerd answered: {0}")]
    Refused(String),
}

/// Sends one request and reads the response.
pub fn query(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let name = socket.display().to_string();
    let io = |e: std::io::Error| ClientError::Io {
        socket: name.clone(),
        error: e.to_string(),
    };
    let stream = connect(socket)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str(&answer) {
        Ok(Response::Error { message }) => Err(ClientError::Refused(message)),
        Ok(r) => Ok(r),
        Err(e) => Err(ClientError::Io {
            socket: name,
            error: format!("bad answer: {e}"),
        }),
    }
}

/// Creates the socket's directory (0700, root-only) and binds the socket (0600), replacing a
/// stale socket file.
pub fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Reads one request from a connection (bounded in size and time). Peers other than root,
/// and malformed requests, get an error answer here and `None`.
pub async fn read_request(stream: tokio::net::UnixStream) -> Option<(Request, OwnedWriteHalf)> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
    let read = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await;
    let message = match (root, read) {
        (false, _) => "permission denied: root only".to_string(),
        (true, Ok(Ok(_))) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => return Some((request, write)),
            Err(e) => format!("bad request: {e}"),
        },
        (true, _) => "no request received".to_string(),
    };
    respond(&mut write, &Response::Error { message }).await;
    None
}

/// Writes one response line (giving up after 2 s: a client that does not read is dropped).
pub async fn respond(write: &mut OwnedWriteHalf, response: &Response) {
    let mut out = serde_json::to_string(response).expect("responses serialize");
    out.push('\n');
    write_line(write, &out).await;
}

async fn write_line(write: &mut OwnedWriteHalf, line: &str) -> bool {
    use tokio::io::AsyncWriteExt as _;
    matches!(
        tokio::time::timeout(Duration::from_secs(2), write.write_all(line.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// Answers `Request::Events`: the history, then (when following) each new line, until the
/// client goes away or stops reading for 2 s.
pub async fn stream_events(
    mut write: OwnedWriteHalf,
    history: Vec<std::sync::Arc<str>>,
    live: Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    for line in history {
        if !write_line(&mut write, &format!("{line}\n")).await {
            return;
        }
    }
    let Some(mut live) = live else { return };
    loop {
        let line = match live.recv().await {
            Ok(line) => format!("{line}\n"),
            Err(RecvError::Lagged(n)) => format!("{{\"lagged\":{n}}}\n"),
            Err(RecvError::Closed) => return,
        };
        if !write_line(&mut write, &line).await {
            return;
        }
    }
}

/// One line `enforcerd events` received.
#[derive(Debug, PartialEq, Eq)]
pub enum EventLine {
    /// A decision, as the daemon's JSON line.
    Decision(String),
    /// The daemon skipped this many lines because the client read too slowly.
    Lagged(u64),
}

/// Sends `Request::Events` and passes each line to `each` until the daemon closes the
/// stream (after the history, unless `follow`) or `each` returns false.
pub fn events(
    socket: &Path,
    follow: bool,
    mut each: impl FnMut(EventLine) -> bool,
) -> Result<(), ClientError> {
    let name = socket.display().to_string();
    let io = |e: std::io::Error| ClientError::Io {
        socket: name.clone(),
        error: e.to_string(),
    };
    let stream = connect(socket)?;
    let mut line = serde_json::to_string(&Request::Events { follow }).expect("requests serialize");
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(io)?;
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| ClientError::Io {
                socket: name.clone(),
                error: format!("bad answer: {e}"),
            })?;
        if let Some(n) = value.get("lagged").and_then(serde_json::Value::as_u64) {
            if !each(EventLine::Lagged(n)) {
                break;
            }
            continue;
        }
        if let Ok(Response::Error { message }) = serde_json::from_value(value) {
            return Err(ClientError::Refused(message));
        }
        if !each(EventLine::Decision(line)) {
            break;
        }
    }
    Ok(())
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let name = socket.display().to_string();
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(name),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(name)
        }
        _ => ClientError::Io {
            socket: name,
            error: e.to_string(),
        },
    })
}

/// The human-readable form of `enforcerd status`.
pub fn render(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let attached = s.programs.iter().filter(|p| p.attached).count();
    let _ = writeln!(
        o,
        "enforcerd {} (pid {}), kernel {}, running since {}",
        s.version, s.pid, s.kernel, s.started
    );
    let _ = writeln!(
        o,
        "programs: {attached}/{} attached ({})",
        s.programs.len(),
        s.programs
            .iter()
            .map(|p| p.hook.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(o, "pinned in {} (on stop: {})", s.pinned_in, s.on_stop);
    if s.unsigned_allowed {
        let _ = writeln!(
            o,
            "WARNING: --allow-unsigned: profiles are applied without signature verification"
        );
    }
    if s.audit_all {
        let _ = writeln!(
            o,
            "--audit: every profile runs in audit mode (nothing is blocked)"
        );
    }
    match &s.last_reload {
        Some(r) => {
            let _ = writeln!(
                o,
                "last reload: {} ({}, {} ms): {}; {} added, {} replaced, {} removed, {} unchanged",
                r.at,
                r.trigger,
                r.duration_ms,
                if r.ok { "ok" } else { "with refusals" },
                r.outcome.added.len(),
                r.outcome.replaced.len(),
                r.outcome.removed.len(),
                r.outcome.unchanged.len()
            );
            for k in &r.outcome.kept {
                let _ = writeln!(o, "  kept previous version of {k}");
            }
            for p in &r.outcome.problems {
                let _ = writeln!(o, "  refused {p}");
            }
        }
        None => {
            let _ = writeln!(o, "last reload: none");
        }
    }
    let _ = writeln!(o, "profiles: {}", s.profiles.len());
    for p in &s.profiles {
        let _ = writeln!(
            o,
            "  {} serial {} {} {} on-violation={} deny={} kill={} audit={}\n    from {}\n    cgroups: {}",
            p.name,
            p.serial,
            p.mode,
            p.sha256,
            p.on_violation,
            p.decisions.deny,
            p.decisions.kill,
            p.decisions.audit,
            p.source,
            p.cgroups.join(", ")
        );
        if !p.pending.is_empty() {
            let _ = writeln!(o, "    bound at creation: {}", p.pending.join(", "));
        }
    }
    let _ = writeln!(o, "kernel counters:");
    for h in &s.hooks {
        let _ = writeln!(
            o,
            "  {:8} allowed={} denied={} killed={} audited={} reported={} aggregated={} dropped={}",
            h.hook, h.allowed, h.denied, h.killed, h.audited, h.reported, h.aggregated, h.dropped
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_have_a_stable_json_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"command":"status"}"#
        );
        let e = Response::Error {
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"result":"error","message":"x"}"#
        );
        let s = Response::Status(Box::default());
        let back: Response = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(matches!(back, Response::Status(st) if *st == Status::default()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_stream_the_history_then_live_lines_and_lag_notices() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/enforcerd.sock");
        let listener = bind(&socket).unwrap();
        let hub = std::sync::Arc::new(crate::report::Hub::new(10));
        hub.publish(r#"{"hook":"file","n":1}"#.into());
        let hub2 = hub.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let Some((Request::Events { follow }, write)) = read_request(stream).await else {
                return;
            };
            assert!(follow);
            let (history, live) = hub2.snapshot(follow);
            hub2.publish(r#"{"hook":"file","n":2}"#.into());
            stream_events(write, history, live).await;
        });
        let socket2 = socket.clone();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let r = events(&socket2, true, |l| {
                got.push(l);
                got.len() < 2
            });
            (r, got)
        })
        .await
        .unwrap();
        server.abort();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(matches!(got.0, Err(ClientError::Refused(_))));
            return;
        }
        got.0.unwrap();
        assert_eq!(
            got.1,
            [
                EventLine::Decision(r#"{"hook":"file","n":1}"#.into()),
                EventLine::Decision(r#"{"hook":"file","n":2}"#.into())
            ]
        );
        assert_eq!(
            serde_json::to_string(&Request::Events { follow: true }).unwrap(),
            r#"{"command":"events","follow":true}"#
        );
    }

    #[test]
    fn a_missing_socket_means_the_daemon_is_not_running() {
        let e = query(Path::new("/nonexistent/enforcerd.sock"), &Request::Status).unwrap_err();
        assert_eq!(
            e.to_string(),
            "enforcerd is not running (nothing listens on /nonexistent/enforcerd.sock)"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_root_client_gets_its_answer() {
        // The test runs as root on the CI machines; as another user the daemon refuses.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/enforcerd.sock");
        let listener = bind(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            if let Some((r, mut write)) = read_request(stream).await {
                assert_eq!(r, Request::Status);
                let status = Status {
                    pid: 7,
                    ..Status::default()
                };
                respond(&mut write, &Response::Status(Box::new(status))).await;
            }
        });
        let socket2 = socket.clone();
        let answer = tokio::task::spawn_blocking(move || query(&socket2, &Request::Status))
            .await
            .unwrap();
        server.await.unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(matches!(answer, Ok(Response::Status(s)) if s.pid == 7));
        } else {
            assert!(matches!(answer, Err(ClientError::Refused(m)) if m.contains("root only")));
        }
    }

    #[test]
    fn render_shows_profiles_reload_and_counters() {
        let s = Status {
            version: "0.1.0".into(),
            kernel: "6.1.0".into(),
            programs: vec![ProgramStatus {
                name: "file_open".into(),
                hook: "file_open".into(),
                attached: true,
                verified_instructions: Some(10),
            }],
            pinned_in: "/sys/fs/bpf/enforcerd/1-2-abc".into(),
            on_stop: "keep".into(),
            last_reload: Some(ReloadStatus {
                trigger: "SIGHUP".into(),
                ok: false,
                outcome: Outcome {
                    kept: vec!["web".into()],
                    problems: vec!["/p/web.yaml: missing signature /p/web.yaml.sig".into()],
                    ..Default::default()
                },
                ..Default::default()
            }),
            profiles: vec![ProfileStatus {
                name: "web".into(),
                serial: 3,
                cgroups: vec!["/web".into()],
                pending: vec!["/system.slice/web.service".into()],
                decisions: DecisionCounts {
                    deny: 2,
                    kill: 0,
                    audit: 0,
                },
                ..Default::default()
            }],
            hooks: vec![HookCounters {
                hook: "file".into(),
                allowed: 5,
                denied: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&s);
        for needle in [
            "programs: 1/1 attached (file_open)",
            "pinned in /sys/fs/bpf/enforcerd/1-2-abc (on stop: keep)",
            "SIGHUP",
            "with refusals",
            "kept previous version of web",
            "refused /p/web.yaml: missing signature /p/web.yaml.sig",
            "web serial 3",
            "deny=2",
            "cgroups: /web",
            "bound at creation: /system.slice/web.service",
            "file     allowed=5 denied=2 killed=0 audited=0 reported=0 aggregated=0 dropped=0",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
    }
}
