use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response,
    body::{Bytes, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::*;

const UID_A: &str = "6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f";
const UID_B: &str = "0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d";
const UID_C: &str = "d4c3b2a1-9f8e-4d7c-8b6a-5f4e3d2c1b0a";
const UID_D: &str = "11111111-2222-4333-8444-555555555555";
const UID_E: &str = "99999999-8888-4777-8666-555555555555";
const ID_A: &str = "8a3c5d1f0e9b7a6c4d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c";
const ID_A_INIT: &str = "1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8091a2b3c4d5e6f70819";
const ID_B: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";
const ID_C: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const ID_D: &str = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn info(
    uid: &str,
    namespace: &str,
    name: &str,
    pod_labels: &[(&str, &str)],
    qos: QosClass,
    containers: &[(&str, Option<(Runtime, &str)>)],
) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        namespace: namespace.into(),
        name: name.into(),
        labels: labels(pod_labels),
        qos,
        containers: containers
            .iter()
            .map(|(name, id)| ContainerInfo {
                name: name.to_string(),
                id: id.map(|(r, id)| (r, id.to_string())),
            })
            .collect(),
    }
}

fn with_uid(uid: &str, qos: QosClass) -> PodInfo {
    info(
        uid,
        "web",
        "p",
        &[],
        qos,
        &[
            ("ctrd", Some((Runtime::Containerd, ID_A))),
            ("crio", Some((Runtime::CriO, ID_C))),
            ("pending", None),
        ],
    )
}

// ---- cgroup paths ----

#[test]
fn pod_cgroups_for_every_qos_class_and_driver() {
    let cases = [
        (
            QosClass::Guaranteed,
            Driver::Systemd,
            "/kubepods.slice/kubepods-pod6f1c2a9e_3b4d_4c5e_8f70_1a2b3c4d5e6f.slice",
            2,
        ),
        (
            QosClass::Burstable,
            Driver::Systemd,
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod6f1c2a9e_3b4d_4c5e_8f70_1a2b3c4d5e6f.slice",
            3,
        ),
        (
            QosClass::BestEffort,
            Driver::Systemd,
            "/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod6f1c2a9e_3b4d_4c5e_8f70_1a2b3c4d5e6f.slice",
            3,
        ),
        (
            QosClass::Guaranteed,
            Driver::Cgroupfs,
            "/kubepods/pod6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f",
            2,
        ),
        (
            QosClass::Burstable,
            Driver::Cgroupfs,
            "/kubepods/burstable/pod6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f",
            3,
        ),
        (
            QosClass::BestEffort,
            Driver::Cgroupfs,
            "/kubepods/besteffort/pod6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f",
            3,
        ),
    ];
    for (qos, driver, path, level) in cases {
        let pod = with_uid(UID_A, qos);
        assert_eq!(pod_cgroup(&pod, driver), path, "{qos:?} {driver:?}");
        assert_eq!(pod_cgroup_level(&pod, driver), level, "{qos:?} {driver:?}");
        // The level is the number of path components.
        assert_eq!(path.split('/').skip(1).count() as u32, level);
        // The pod cgroup lies under the prefix given for its class, at the level given there.
        assert!(
            pod_cgroup_prefixes(driver)
                .iter()
                .any(|(prefix, l)| path.starts_with(prefix.as_str()) && *l == level),
            "{path}"
        );
    }
}

#[test]
fn container_cgroups_for_every_qos_class_driver_and_runtime() {
    let uid_ = "6f1c2a9e_3b4d_4c5e_8f70_1a2b3c4d5e6f";
    let systemd_pod = |qos| match qos {
        QosClass::Guaranteed => format!("/kubepods.slice/kubepods-pod{uid_}.slice"),
        QosClass::Burstable => {
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice")
        }
        QosClass::BestEffort => {
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice")
        }
    };
    let cgroupfs_pod = |qos| match qos {
        QosClass::Guaranteed => format!("/kubepods/pod{UID_A}"),
        QosClass::Burstable => format!("/kubepods/burstable/pod{UID_A}"),
        QosClass::BestEffort => format!("/kubepods/besteffort/pod{UID_A}"),
    };
    for qos in [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ] {
        let pod = with_uid(UID_A, qos);
        assert_eq!(
            container_cgroup(&pod, "ctrd", Driver::Systemd).unwrap(),
            format!("{}/cri-containerd-{ID_A}.scope", systemd_pod(qos))
        );
        assert_eq!(
            container_cgroup(&pod, "crio", Driver::Systemd).unwrap(),
            format!("{}/crio-{ID_C}.scope", systemd_pod(qos))
        );
        assert_eq!(
            container_cgroup(&pod, "ctrd", Driver::Cgroupfs).unwrap(),
            format!("{}/{ID_A}", cgroupfs_pod(qos))
        );
        assert_eq!(
            container_cgroup(&pod, "crio", Driver::Cgroupfs).unwrap(),
            format!("{}/crio-{ID_C}", cgroupfs_pod(qos))
        );
        for driver in [Driver::Systemd, Driver::Cgroupfs] {
            // Not started yet, or no such container.
            assert_eq!(container_cgroup(&pod, "pending", driver), None);
            assert_eq!(container_cgroup(&pod, "nope", driver), None);
        }
    }
    // One exact pair, spelled out.
    assert_eq!(
        container_cgroup(
            &with_uid(UID_B, QosClass::Burstable),
            "ctrd",
            Driver::Systemd
        )
        .unwrap(),
        "/kubepods.slice/kubepods-burstable.slice/\
         kubepods-burstable-pod0a1b2c3d_4e5f_4a6b_9c7d_8e9f0a1b2c3d.slice/\
         cri-containerd-8a3c5d1f0e9b7a6c4d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c.scope"
    );
}

#[test]
fn pod_cgroup_prefixes_per_driver() {
    let s = |v: &[(&str, u32)]| {
        v.iter()
            .map(|(p, l)| (p.to_string(), *l))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pod_cgroup_prefixes(Driver::Systemd),
        s(&[
            ("/kubepods.slice/kubepods-pod", 2),
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod",
                3
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod",
                3
            ),
        ])
    );
    assert_eq!(
        pod_cgroup_prefixes(Driver::Cgroupfs),
        s(&[
            ("/kubepods/pod", 2),
            ("/kubepods/burstable/pod", 3),
            ("/kubepods/besteffort/pod", 3),
        ])
    );
    // The QoS-level cgroups themselves are not under a Guaranteed pod prefix.
    for driver in [Driver::Systemd, Driver::Cgroupfs] {
        let prefixes = pod_cgroup_prefixes(driver);
        for qos_dir in [
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods/burstable",
            "/kubepods/besteffort",
        ] {
            assert!(
                !prefixes
                    .iter()
                    .any(|(p, _)| qos_dir.starts_with(p.as_str()))
            );
        }
    }
}

#[test]
fn detect_driver_by_kubepods_root() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(detect_driver(dir.path()), None);
    std::fs::create_dir(dir.path().join("kubepods.slice")).unwrap();
    assert_eq!(detect_driver(dir.path()), Some(Driver::Systemd));
    std::fs::create_dir(dir.path().join("kubepods")).unwrap();
    assert_eq!(detect_driver(dir.path()), None);
    std::fs::remove_dir(dir.path().join("kubepods.slice")).unwrap();
    assert_eq!(detect_driver(dir.path()), Some(Driver::Cgroupfs));
}

// ---- selectors ----

#[test]
fn selector_matching() {
    let pod = info(
        UID_A,
        "web",
        "frontend-1",
        &[("app", "nginx"), ("tier", "front"), ("empty", "")],
        QosClass::Burstable,
        &[],
    );
    assert!(matches("web", &labels(&[("app", "nginx")]), &pod));
    assert!(matches(
        "web",
        &labels(&[("app", "nginx"), ("tier", "front"), ("empty", "")]),
        &pod
    ));
    assert!(matches("web", &labels(&[]), &pod));
    assert!(!matches("shop", &labels(&[("app", "nginx")]), &pod));
    assert!(!matches("web", &labels(&[("app", "nginx2")]), &pod));
    assert!(!matches("web", &labels(&[("app", "")]), &pod));
    assert!(!matches(
        "web",
        &labels(&[("app", "nginx"), ("version", "2")]),
        &pod
    ));
    // A label present with an empty value is not the same as an absent one.
    assert!(!matches("web", &labels(&[("missing", "")]), &pod));
}

#[test]
fn node_name_must_not_be_empty() {
    // node_name() itself reads $NODE_NAME; tests do not change the environment (other tests
    // read it from other threads).
    assert_eq!(non_empty(Some("node-7".into())).as_deref(), Some("node-7"));
    assert_eq!(non_empty(Some(String::new())), None);
    assert_eq!(non_empty(None), None);
}

// ---- API objects ----

#[test]
fn container_id_schemes() {
    assert_eq!(
        parse_container_id(&format!("containerd://{ID_A}")),
        Some((Runtime::Containerd, ID_A.to_string()))
    );
    assert_eq!(
        parse_container_id(&format!("cri-o://{ID_C}")),
        Some((Runtime::CriO, ID_C.to_string()))
    );
    for unsupported in [
        format!("docker://{ID_A}"),
        format!("cri-dockerd://{ID_A}"),
        format!("crio://{ID_A}"),
        ID_A.to_string(),
        "containerd://".into(),
        "containerd://../../system.slice".into(),
        "containerd://abc/def".into(),
        "cri-o://abc.scope".into(),
        String::new(),
    ] {
        assert_eq!(parse_container_id(&unsupported), None, "{unsupported}");
    }
}

#[test]
fn quantities() {
    let q = parse_quantity;
    assert_eq!(q("0"), Some((0, 0)));
    assert_eq!(q("0m"), Some((0, 0)));
    assert_eq!(q("0.0Gi"), Some((0, 0)));
    assert_eq!(q("1"), q("1000m"));
    assert_eq!(q("500m"), q("0.5"));
    assert_eq!(q(".5"), q("500m"));
    assert_eq!(q("1k"), q("1000"));
    assert_eq!(q("1e3"), q("1k"));
    assert_eq!(q("1E3"), q("1000"));
    assert_eq!(q("1Ki"), q("1024"));
    assert_eq!(q("128Mi"), q("134217728"));
    assert_eq!(q("1Gi"), q("1024Mi"));
    assert_eq!(q("1.5Gi"), q("1536Mi"));
    assert_eq!(q("100n"), q("0.1u"));
    assert_eq!(q("+2"), q("2"));
    assert_eq!(q("1E"), q("1000P"));
    assert_eq!(q("1e-3"), q("1m"));
    assert_ne!(q("1"), q("1001m"));
    assert_ne!(q("1Gi"), q("1G"));
    for bad in [
        "", ".", "1..2", "1.2.3", "-1", "1x", "1Kb", "Gi", "1e", "1e+", "1 Gi",
    ] {
        assert_eq!(q(bad), None, "{bad:?}");
    }
    // Too large to represent: not a parse, never a panic.
    assert_eq!(q("999999999999999999999999999999999999999999Ei"), None);
}

fn spec(value: Value) -> PodSpec {
    serde_json::from_value(value).unwrap()
}

fn container(name: &str, requests: Value, limits: Value) -> Value {
    json!({"name": name, "image": "img", "resources": {"requests": requests, "limits": limits}})
}

#[test]
fn qos_computed_from_the_spec() {
    let cases = [
        (
            json!({"containers": [{"name": "a", "image": "img"}]}),
            QosClass::BestEffort,
        ),
        (json!({"containers": []}), QosClass::BestEffort),
        (
            json!({"containers": [container("a", json!({"cpu": "1", "memory": "1Gi"}), json!({"cpu": "1000m", "memory": "1024Mi"}))]}),
            QosClass::Guaranteed,
        ),
        // Limits only: requests default to them.
        (
            json!({"containers": [container("a", json!({}), json!({"cpu": "1", "memory": "1Gi"}))]}),
            QosClass::Guaranteed,
        ),
        (
            json!({"containers": [container("a", json!({"cpu": "500m"}), json!({"cpu": "1", "memory": "1Gi"}))]}),
            QosClass::Burstable,
        ),
        // cpu only is not Guaranteed.
        (
            json!({"containers": [container("a", json!({"cpu": "1"}), json!({"cpu": "1"}))]}),
            QosClass::Burstable,
        ),
        (
            json!({"containers": [container("a", json!({"memory": "64Mi"}), json!({}))]}),
            QosClass::Burstable,
        ),
        // Other resources do not count.
        (
            json!({"containers": [container("a", json!({"ephemeral-storage": "1Gi"}), json!({"ephemeral-storage": "1Gi"}))]}),
            QosClass::BestEffort,
        ),
        // A Guaranteed and a BestEffort container make a Burstable pod.
        (
            json!({"containers": [
                container("a", json!({"cpu": "1", "memory": "1Gi"}), json!({"cpu": "1", "memory": "1Gi"})),
                {"name": "b", "image": "img"},
            ]}),
            QosClass::Burstable,
        ),
        // Init containers count.
        (
            json!({
                "initContainers": [container("init", json!({"cpu": "100m"}), json!({}))],
                "containers": [{"name": "b", "image": "img"}],
            }),
            QosClass::Burstable,
        ),
        (
            json!({
                "initContainers": [container("init", json!({"cpu": "2", "memory": "1G"}), json!({"cpu": "2", "memory": "1G"}))],
                "containers": [container("a", json!({"cpu": "1", "memory": "1Gi"}), json!({"cpu": "1", "memory": "1Gi"}))],
            }),
            QosClass::Guaranteed,
        ),
        // Pod-level resources take precedence over the containers'.
        (
            json!({
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                "containers": [{"name": "a", "image": "img"}],
            }),
            QosClass::Guaranteed,
        ),
        (
            json!({
                "resources": {"requests": {"cpu": "1"}},
                "containers": [container("a", json!({"cpu": "1", "memory": "1Gi"}), json!({"cpu": "1", "memory": "1Gi"}))],
            }),
            QosClass::Burstable,
        ),
    ];
    for (i, (value, qos)) in cases.into_iter().enumerate() {
        assert_eq!(compute_qos(&spec(value)), qos, "case {i}");
    }
}

/// A pod as the API server serves it.
fn pod(
    uid: &str,
    namespace: &str,
    name: &str,
    pod_labels: &[(&str, &str)],
    qos: &str,
    containers: &[(&str, Option<&str>)],
    resource_version: &str,
) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, id)| {
            let mut status = json!({
                "name": name,
                "image": "registry.example/app:1",
                "imageID": "",
                "ready": id.is_some(),
                "restartCount": 0,
                "started": id.is_some(),
                "state": if id.is_some() {
                    json!({"running": {"startedAt": "2026-11-23T22:00:05Z"}})
                } else {
                    json!({"waiting": {"reason": "ContainerCreating"}})
                },
            });
            if let Some(id) = id {
                status["containerID"] = json!(id);
            }
            status
        })
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": resource_version,
            "creationTimestamp": "2026-11-23T22:00:00Z",
            "labels": labels(pod_labels),
        },
        "spec": {
            "nodeName": "node-1",
            "containers": containers
                .iter()
                .map(|(name, _)| json!({"name": name, "image": "registry.example/app:1"}))
                .collect::<Vec<_>>(),
        },
        "status": {
            "phase": if containers.iter().all(|(_, id)| id.is_some()) { "Running" } else { "Pending" },
            "qosClass": qos,
            "containerStatuses": statuses,
        },
    })
}

fn pod_info_of(value: Value) -> Option<PodInfo> {
    pod_info(&serde_json::from_value::<Pod>(value).unwrap())
}

#[test]
fn pod_info_from_api_objects() {
    let mut a = pod(
        UID_A,
        "web",
        "frontend-1",
        &[("app", "frontend")],
        "Burstable",
        &[
            ("nginx", Some(&format!("containerd://{ID_A}"))),
            ("sidecar", None),
        ],
        "10",
    );
    a["spec"]["initContainers"] = json!([{"name": "init", "image": "img"}]);
    a["status"]["initContainerStatuses"] = json!([{
        "name": "init", "image": "img", "imageID": "", "ready": false, "restartCount": 0,
        "containerID": format!("containerd://{ID_A_INIT}"),
        "state": {"terminated": {"exitCode": 0}},
    }]);
    assert_eq!(
        pod_info_of(a.clone()),
        Some(info(
            UID_A,
            "web",
            "frontend-1",
            &[("app", "frontend")],
            QosClass::Burstable,
            &[
                ("init", Some((Runtime::Containerd, ID_A_INIT))),
                ("nginx", Some((Runtime::Containerd, ID_A))),
                ("sidecar", None),
            ],
        ))
    );

    // status.qosClass wins over the spec; without it, the spec decides.
    let mut b = pod(
        UID_B,
        "db",
        "pg-0",
        &[],
        "Guaranteed",
        &[("pg", Some(&format!("cri-o://{ID_C}")))],
        "11",
    );
    assert_eq!(pod_info_of(b.clone()).unwrap().qos, QosClass::Guaranteed);
    b["status"].as_object_mut().unwrap().remove("qosClass");
    assert_eq!(pod_info_of(b.clone()).unwrap().qos, QosClass::BestEffort);
    b["spec"]["containers"][0]["resources"] = json!({"requests": {"memory": "1Gi"}});
    assert_eq!(pod_info_of(b.clone()).unwrap().qos, QosClass::Burstable);
    b["status"]["qosClass"] = json!("SomethingNew");
    assert_eq!(pod_info_of(b.clone()).unwrap().qos, QosClass::Burstable);
    assert_eq!(
        pod_info_of(b.clone()).unwrap().containers,
        vec![ContainerInfo {
            name: "pg".into(),
            id: Some((Runtime::CriO, ID_C.into()))
        }]
    );

    // Terminated pods are left out; so are pods whose uid could not name a cgroup.
    for phase in ["Succeeded", "Failed"] {
        let mut done = a.clone();
        done["status"]["phase"] = json!(phase);
        assert_eq!(pod_info_of(done), None, "{phase}");
    }
    for uid in ["", "../../system.slice", "a/b", "a_b"] {
        let mut odd = a.clone();
        odd["metadata"]["uid"] = json!(uid);
        assert_eq!(pod_info_of(odd), None, "{uid:?}");
    }
    // No status at all (just created): no ids, QoS from the spec.
    let mut fresh = a.clone();
    fresh.as_object_mut().unwrap().remove("status");
    let fresh = pod_info_of(fresh).unwrap();
    assert_eq!(fresh.qos, QosClass::BestEffort);
    assert!(fresh.containers.iter().all(|c| c.id.is_none()));
}

// ---- watch_pods against a fake API server ----

/// A request the fake API server received.
#[derive(Debug)]
struct Seen {
    watch: bool,
    params: BTreeMap<String, String>,
    at: Instant,
}

#[derive(Default)]
struct Script {
    /// Responses to successive list requests: status and body.
    lists: VecDeque<(u16, String)>,
    /// Event lines of successive watch requests; a stream ends when its sender is dropped.
    watches: VecDeque<mpsc::UnboundedReceiver<String>>,
}

/// A minimal Kubernetes API server for `GET /api/v1/pods`, answering from a script.
struct FakeApi {
    url: String,
    script: Arc<Mutex<Script>>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

type Body = BoxBody<Bytes, Infallible>;

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn respond(
    script: &Mutex<Script>,
    seen: &mpsc::UnboundedSender<Seen>,
    req: &Request<Incoming>,
) -> Response<Body> {
    let params: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    if req.method() != hyper::Method::GET || req.uri().path() != "/api/v1/pods" {
        return Response::builder()
            .status(404)
            .body(Full::new(Bytes::from("not found")).boxed())
            .unwrap();
    }
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let _ = seen.send(Seen {
        watch,
        params,
        at: Instant::now(),
    });
    let response = Response::builder().header("content-type", "application/json");
    if watch {
        let body: Body = match script.lock().unwrap().watches.pop_front() {
            Some(lines) => BodyExt::boxed(StreamBody::new(futures::stream::unfold(
                lines,
                |mut lines| async move {
                    let line = lines.recv().await?;
                    Some((Ok(Frame::data(Bytes::from(line + "\n"))), lines))
                },
            ))),
            // Nothing scripted: a watch on which nothing happens.
            None => BodyExt::boxed(StreamBody::new(futures::stream::pending::<
                Result<Frame<Bytes>, Infallible>,
            >())),
        };
        response.status(200).body(body).unwrap()
    } else {
        let (status, body) = script.lock().unwrap().lists.pop_front().unwrap_or((
            500,
            status_json(500, "InternalError", "the test scripted no more lists"),
        ));
        response
            .status(status)
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap()
    }
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let server_script = script.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let script = server_script.clone();
                let seen = seen_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let response = respond(&script, &seen, &req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        FakeApi { url, script, seen }
    }

    fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }

    /// Queues the response to the next list request.
    fn list(&self, status: u16, body: String) {
        self.script.lock().unwrap().lists.push_back((status, body));
    }

    /// Queues the next watch request's stream; events sent on the returned sender go out as
    /// they are sent, and dropping it ends the stream.
    fn watch(&self) -> mpsc::UnboundedSender<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.script.lock().unwrap().watches.push_back(rx);
        tx
    }

    /// The next request the server received.
    async fn request(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(4), self.seen.recv())
            .await
            .expect("no request to the fake API server within 4 s")
            .unwrap()
    }

    /// The next request, which must be a list (`watch` false) or a watch from `version`.
    async fn expect(&mut self, watch: Option<&str>) -> Seen {
        let seen = self.request().await;
        assert_eq!(
            seen.params.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-1"),
            "{seen:?}"
        );
        match watch {
            None => assert!(!seen.watch, "expected a list: {seen:?}"),
            Some(version) => {
                assert!(seen.watch, "expected a watch: {seen:?}");
                assert_eq!(
                    seen.params.get("resourceVersion").map(String::as_str),
                    Some(version),
                    "{seen:?}"
                );
                assert_eq!(
                    seen.params.get("allowWatchBookmarks").map(String::as_str),
                    Some("true")
                );
            }
        }
        seen
    }
}

fn pod_list(resource_version: &str, items: &[&Value]) -> String {
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
    .to_string()
}

fn event(kind: &str, object: &Value) -> String {
    json!({"type": kind, "object": object}).to_string()
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
    .to_string()
}

/// The next snapshot `watch_pods` publishes.
async fn next(rx: &mut watch::Receiver<Pods>) -> BTreeMap<String, PodInfo> {
    tokio::time::timeout(Duration::from_secs(4), rx.changed())
        .await
        .expect("no pods published within 4 s")
        .expect("watch_pods dropped its sender");
    (**rx.borrow_and_update()).clone()
}

fn set(pods: &[&PodInfo]) -> BTreeMap<String, PodInfo> {
    pods.iter().map(|p| (p.uid.clone(), (*p).clone())).collect()
}

#[tokio::test]
async fn watch_pods_follows_the_api_server() {
    let mut api = FakeApi::start().await;
    let containerd = |id: &str| format!("containerd://{id}");
    let crio = |id: &str| format!("cri-o://{id}");

    let a = pod(
        UID_A,
        "web",
        "frontend-1",
        &[("app", "frontend")],
        "Burstable",
        &[("nginx", Some(&containerd(ID_A)))],
        "90",
    );
    let a_info = info(
        UID_A,
        "web",
        "frontend-1",
        &[("app", "frontend")],
        QosClass::Burstable,
        &[("nginx", Some((Runtime::Containerd, ID_A)))],
    );
    let b = pod(
        UID_B,
        "web",
        "api-1",
        &[("app", "api")],
        "Guaranteed",
        &[("api", None)],
        "95",
    );
    let b_info = info(
        UID_B,
        "web",
        "api-1",
        &[("app", "api")],
        QosClass::Guaranteed,
        &[("api", None)],
    );
    let mut done = pod(
        UID_E,
        "web",
        "job-1",
        &[],
        "BestEffort",
        &[("job", Some(&containerd(ID_D)))],
        "96",
    );
    done["status"]["phase"] = json!("Succeeded");

    // 1. The initial list, with the field selector; the finished job is left out.
    api.list(200, pod_list("100", &[&a, &b, &done]));
    let w1 = api.watch();
    let (tx, mut rx) = watch::channel(Pods::default());
    let task = tokio::spawn(watch_pods(api.client(), "node-1".into(), tx));
    assert_eq!(next(&mut rx).await, set(&[&a_info, &b_info]));
    let list = api.expect(None).await;
    assert_eq!(list.params.get("watch"), None);
    api.expect(Some("100")).await;

    // 2. ADDED: a CRI-O pod in another namespace.
    let c = pod(
        UID_C,
        "db",
        "pg-0",
        &[("app", "pg")],
        "BestEffort",
        &[("pg", Some(&crio(ID_C)))],
        "101",
    );
    let c_info = info(
        UID_C,
        "db",
        "pg-0",
        &[("app", "pg")],
        QosClass::BestEffort,
        &[("pg", Some((Runtime::CriO, ID_C)))],
    );
    w1.send(event("ADDED", &c)).unwrap();
    assert_eq!(next(&mut rx).await, set(&[&a_info, &b_info, &c_info]));

    // 3. MODIFIED: b's container started, and b got a label.
    let b2 = pod(
        UID_B,
        "web",
        "api-1",
        &[("app", "api"), ("version", "v2")],
        "Guaranteed",
        &[("api", Some(&containerd(ID_B)))],
        "102",
    );
    let b2_info = info(
        UID_B,
        "web",
        "api-1",
        &[("app", "api"), ("version", "v2")],
        QosClass::Guaranteed,
        &[("api", Some((Runtime::Containerd, ID_B)))],
    );
    w1.send(event("MODIFIED", &b2)).unwrap();
    assert_eq!(next(&mut rx).await, set(&[&a_info, &b2_info, &c_info]));

    // 4. A BOOKMARK (what the API server sends: the kind, and only metadata.resourceVersion),
    // then the server ends the watch: the watcher resumes from the bookmark, without a list,
    // and publishes nothing.
    let bookmark = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "107"},
        "spec": {"containers": null},
        "status": {},
    });
    w1.send(event("BOOKMARK", &bookmark)).unwrap();
    let w2 = api.watch();
    drop(w1);
    api.expect(Some("107")).await;
    assert!(!rx.has_changed().unwrap());

    // 5. DELETED.
    w2.send(event("DELETED", &a)).unwrap();
    assert_eq!(next(&mut rx).await, set(&[&b2_info, &c_info]));

    // 6. 410 Gone: the watcher lists again. c was deleted and d added while the watch was
    // gone; the new list replaces the set.
    let d = pod(
        UID_D,
        "web",
        "worker-1",
        &[("app", "worker")],
        "Burstable",
        &[("w", Some(&crio(ID_D)))],
        "180",
    );
    let d_info = info(
        UID_D,
        "web",
        "worker-1",
        &[("app", "worker")],
        QosClass::Burstable,
        &[("w", Some((Runtime::CriO, ID_D)))],
    );
    api.list(200, pod_list("200", &[&b2, &d]));
    let w3 = api.watch();
    let gone = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 107 (150)",
        "reason": "Expired",
        "code": 410,
    });
    w2.send(event("ERROR", &gone)).unwrap();
    assert_eq!(next(&mut rx).await, set(&[&b2_info, &d_info]));
    api.expect(None).await;
    api.expect(Some("200")).await;

    // 7. A MODIFIED that changes nothing enforcerd uses (readiness, say) publishes nothing;
    // the re-watch from its resourceVersion shows it was processed.
    let mut b3 = b2.clone();
    b3["metadata"]["resourceVersion"] = json!("201");
    b3["status"]["containerStatuses"][0]["ready"] = json!(false);
    w3.send(event("MODIFIED", &b3)).unwrap();
    let w4 = api.watch();
    drop(w3);
    api.expect(Some("201")).await;
    assert!(!rx.has_changed().unwrap());

    // 8. A pod that finishes leaves the set.
    let mut d2 = d.clone();
    d2["metadata"]["resourceVersion"] = json!("202");
    d2["status"]["phase"] = json!("Succeeded");
    w4.send(event("MODIFIED", &d2)).unwrap();
    assert_eq!(next(&mut rx).await, set(&[&b2_info]));

    // 9. watch_pods ends when the receiver is dropped, even mid-watch.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("watch_pods did not end after its receiver was dropped")
        .unwrap();
    drop(w4);
}

/// A fixed backoff, so that the retry test is fast.
struct Fixed(Duration);

impl Iterator for Fixed {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl Backoff for Fixed {
    fn reset(&mut self) {}
}

#[tokio::test]
async fn api_errors_are_retried_after_a_backoff() {
    let mut api = FakeApi::start().await;
    api.list(
        500,
        status_json(500, "InternalError", "etcdserver: request timed out"),
    );
    api.list(
        403,
        status_json(
            403,
            "Forbidden",
            "pods is forbidden: User \"system:serviceaccount:enforcerd:enforcerd\" cannot list \
             resource \"pods\" in API group \"\" at the cluster scope",
        ),
    );
    // An empty node: the completed list is published all the same.
    api.list(200, pod_list("5", &[]));
    let (tx, mut rx) = watch::channel(Pods::default());
    let backoff = Duration::from_millis(150);
    let task = tokio::spawn(watch_pods_with(
        api.client(),
        "node-1".into(),
        tx,
        move || Fixed(backoff),
    ));
    assert!(next(&mut rx).await.is_empty());
    let first = api.expect(None).await;
    let second = api.expect(None).await;
    let third = api.expect(None).await;
    assert!(
        second.at - first.at >= backoff,
        "{:?}",
        second.at - first.at
    );
    assert!(
        third.at - second.at >= backoff,
        "{:?}",
        third.at - second.at
    );
    api.expect(Some("5")).await;
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn watch_pods_ends_at_once_without_receivers() {
    let api = FakeApi::start().await;
    let (tx, rx) = watch::channel(Pods::default());
    drop(rx);
    tokio::time::timeout(
        Duration::from_secs(2),
        watch_pods(api.client(), "node-1".into(), tx),
    )
    .await
    .unwrap();
}

/// From the API server to the cgroups a profile governs: the real client lists the pods, and
/// `kubernetes` selectors resolve against that list and a cgroup tree (kubelet has created
/// frontend-1's pod cgroup, systemd driver; api-1's not yet).
#[tokio::test]
async fn listed_pods_end_up_governed() {
    let mut api = FakeApi::start().await;
    let a = pod(
        UID_A,
        "web",
        "frontend-1",
        &[("app", "frontend")],
        "Burstable",
        &[("nginx", Some(&format!("containerd://{ID_A}")))],
        "90",
    );
    let b = pod(
        UID_B,
        "web",
        "api-1",
        &[("app", "api")],
        "Guaranteed",
        &[("api", None)],
        "95",
    );
    api.list(200, pod_list("100", &[&a, &b]));
    let _w = api.watch();
    let (tx, mut rx) = watch::channel(Pods::default());
    let task = tokio::spawn(watch_pods(api.client(), "node-1".into(), tx));
    let pods: Pods = Arc::new(next(&mut rx).await);
    api.expect(None).await;

    let dir = tempfile::tempdir().unwrap();
    let frontend = pod_cgroup(&pods[UID_A], Driver::Systemd);
    std::fs::create_dir_all(dir.path().join(frontend.trim_start_matches('/'))).unwrap();
    let fs = crate::workload::CgroupFs {
        root: dir.path().into(),
    };
    let resolve = |selector: &str| {
        let text = format!(
            "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {{name: p, serial: 1}}\nspec:\n  selector: {{kubernetes: {selector}}}\n"
        );
        let profile = crate::profile::parse(Path::new("p.yaml"), text.as_bytes()).unwrap();
        fs.resolve(&profile, Some(&pods)).unwrap()
    };

    let r = resolve("{namespace: web, podLabels: {app: frontend}}");
    let governed: Vec<&str> = r.cgroups.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(governed, [frontend.as_str()]);
    let mut expected = vec![frontend.clone(), pod_cgroup(&pods[UID_A], Driver::Cgroupfs)];
    expected.sort();
    assert_eq!(r.pending, expected);

    // api-1 is expected under both drivers though no cgroup of it exists yet.
    let r = resolve("{namespace: web, podLabels: {app: api}}");
    assert!(r.cgroups.is_empty());
    assert_eq!(r.pending.len(), 2);

    // A container scope: the started container's cgroups; none for a container without id.
    let r = resolve("{namespace: web, podLabels: {app: frontend}, container: nginx}");
    let mut expected: Vec<String> = [Driver::Systemd, Driver::Cgroupfs]
        .iter()
        .filter_map(|d| container_cgroup(&pods[UID_A], "nginx", *d))
        .collect();
    expected.sort();
    assert_eq!(r.pending, expected);
    assert!(
        resolve("{namespace: web, podLabels: {app: api}, container: api}")
            .pending
            .is_empty()
    );
    // Another namespace selects nothing.
    assert!(
        resolve("{namespace: other, podLabels: {app: frontend}}")
            .pending
            .is_empty()
    );
    task.abort();
}
