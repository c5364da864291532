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

pub use crate::reconcile::Outcome;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
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
    pub dropped: u64,
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
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(name.clone()),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(name.clone())
        }
        _ => io(e),
    })?;
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

/// Reads one request from a connection (bounded in size and time) and answers it with
/// `answer`. Peers other than root get an error.
pub async fn serve_one(stream: tokio::net::UnixStream, answer: impl FnOnce(Request) -> Response) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
    let read = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await;
    let response = match (root, read) {
        (false, _) => Response::Error {
            message: "permission denied: root only".into(),
        },
        (true, Ok(Ok(_))) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(request),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
        (true, _) => Response::Error {
            message: "no request received".into(),
        },
    };
    let mut out = serde_json::to_string(&response).expect("responses serialize");
    out.push('\n');
    let _ = tokio::time::timeout(Duration::from_secs(2), write.write_all(out.as_bytes())).await;
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
    }
    let _ = writeln!(o, "kernel counters:");
    for h in &s.hooks {
        let _ = writeln!(
            o,
            "  {:8} allowed={} denied={} killed={} audited={} dropped={}",
            h.hook, h.allowed, h.denied, h.killed, h.audited, h.dropped
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
            serve_one(stream, |r| {
                assert_eq!(r, Request::Status);
                Response::Status(Box::new(Status {
                    pid: 7,
                    ..Status::default()
                }))
            })
            .await;
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
            "SIGHUP",
            "with refusals",
            "kept previous version of web",
            "refused /p/web.yaml: missing signature /p/web.yaml.sig",
            "web serial 3",
            "deny=2",
            "cgroups: /web",
            "file     allowed=5 denied=2",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
    }
}
