//! A stand-in Kubernetes API server for the VM scenarios: it serves the pods of one node as
//! the real API does (`GET /api/v1/pods` lists with a resourceVersion, `watch=true` streams of
//! ADDED/MODIFIED/DELETED events, chunked, one JSON object per line), so enforcerd's real
//! `kube` client watches it through a kubeconfig. The scenario changes the pods and every open
//! watch sees the event.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Value>,
    resource_version: u64,
    watchers: Vec<Sender<String>>,
}

/// A self-signed CA certificate (PEM, base64) for the kubeconfig. The server is plain http,
/// so it is never used; it is there because the client's TLS setup otherwise loads the
/// system's CA certificates, and the VM has none.
const UNUSED_CA: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJwVENDQVV1Z0F3SUJBZ0lVVndIN0VzV2NQcFkxcnM0UXFxaHBHekNsUzZrd0NnWUlLb1pJemowRUF3SXcKSnpFbE1DTUdBMVVFQXd3Y1pXNW1iM0pqWlhKa0xYWnRMWFJsYzNSekxYVnVkWE5sWkMxallUQWdGdzB5TmpFeApNak15TXpFMU1UVmFHQTh5TVRJMk1UQXpNREl6TVRVeE5Wb3dKekVsTUNNR0ExVUVBd3djWlc1bWIzSmpaWEprCkxYWnRMWFJsYzNSekxYVnVkWE5sWkMxallUQlpNQk1HQnlxR1NNNDlBZ0VHQ0NxR1NNNDlBd0VIQTBJQUJIV04KbFFhRXhialorbld5SEpFdEdiZVB3RTI3VmQza2lJVEZSbTNYTlg4MjB1aXVBSVRjc0piQUZKeU8zL2tRM3EzWApuUVZ5WG5md0NHR3JqZTBZczl1alV6QlJNQjBHQTFVZERnUVdCQlR3ZXFpdVBXVkVLYWNTdWx5MlVOVkN6V3hDCktEQWZCZ05WSFNNRUdEQVdnQlR3ZXFpdVBXVkVLYWNTdWx5MlVOVkN6V3hDS0RBUEJnTlZIUk1CQWY4RUJUQUQKQVFIL01Bb0dDQ3FHU000OUJBTUNBMGdBTUVVQ0lRRERzN0g2SURSeFFuWGw4RTBlM1htWWlsbjhVTXNkbVFZSQozWjMwdG5Gd3NnSWdUUnJsL1FoRThCaU9MMnhpU0lDN0ZVcEFyRXhINEhNSURhaTNxa0hLZmRzPQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==";

pub struct FakeApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// Listens on 127.0.0.1 (a free port) and writes a kubeconfig pointing at it.
    pub fn start(kubeconfig: &str) -> Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        std::fs::write(
            kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{port}\", certificate-authority-data: {UNUSED_CA}}}\n\
                 users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n\
                 current-context: fake\n"
            ),
        )?;
        Ok(FakeApi { port, state })
    }

    /// Adds (ADDED) or replaces (MODIFIED) a pod.
    pub fn apply(&self, mut pod: Value) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.resource_version += 1;
        pod["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = if s.pods.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.pods.insert(uid, pod.clone());
        broadcast(&mut s, kind, pod);
    }

    pub fn delete(&self, uid: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.resource_version += 1;
        if let Some(mut pod) = s.pods.remove(uid) {
            pod["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            broadcast(&mut s, "DELETED", pod);
        }
    }
}

fn broadcast(s: &mut State, kind: &str, object: Value) {
    let line = json!({"type": kind, "object": object}).to_string();
    s.watchers.retain(|w| w.send(line.clone()).is_ok());
}

/// A pod object as the API returns it, on node `node`.
pub fn pod(node: &str, namespace: &str, name: &str, uid: &str, labels: Value, qos: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "qosClass": qos},
    })
}

/// Handles the requests of one connection (the client may reuse it; a watch keeps it).
fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Ok(read) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        // Headers up to the blank line (GET requests carry no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
        }
        let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path != "/api/v1/pods" {
            let body = "not found";
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        if query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1")
        {
            let (tx, rx) = channel();
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .watchers
                .push(tx);
            stream_watch(&mut out, &rx);
            return;
        }
        let body = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            json!({
                "kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": s.resource_version.to_string()},
                "items": s.pods.values().collect::<Vec<_>>(),
            })
            .to_string()
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

/// A watch response: chunked, one event per line, until the client goes away.
fn stream_watch(out: &mut TcpStream, events: &Receiver<String>) {
    if out
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .is_err()
    {
        return;
    }
    loop {
        match events.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let chunk = format!("{line}\n");
                let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                if out.write_all(framed.as_bytes()).is_err() || out.flush().is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
