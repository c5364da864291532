//! Pods governed from their first exec. A stand-in API server lists this node's pods to the
//! daemon's real `kube` client; the test then creates the kubepods cgroups the way kubelet and
//! the runtimes do — systemd-driver paths for containerd, cgroupfs paths for CRI-O — *after*
//! the profile was applied, and execs in the container cgroup at once: the first exec is
//! already decided by the pod's profile, because the kernel bound the pod cgroup at its
//! creation. A pod cgroup that appears before its pod is known gets the node default
//! (`deny-exec` here) until the pod is listed; a known pod no profile selects is left alone.

use std::time::Duration;

use crate::guest::daemon::status_json;
use crate::guest::fixtures::{self, BUSYBOX, CONNECT_ALLOW_ALL, DENIED_BUSYBOX, FILES_ALLOW_ALL};
use crate::guest::kube_api::{FakeApi, pod};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Exec, Outcome, exec_in};
use anyhow::Result;
use serde_json::{Value, json};

const NODE: &str = "vm-node";
const KUBECONFIG: &str = "/tmp/kubeconfig";
const CONTAINER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CONTAINER_ID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn uid(n: u32) -> String {
    format!("1111aaaa-0000-4000-8000-{n:012}")
}

fn systemd_pod(qos: &str, uid: &str) -> String {
    let uid = uid.replace('-', "_");
    match qos {
        "Guaranteed" => format!("/kubepods.slice/kubepods-pod{uid}.slice"),
        q => {
            let q = q.to_lowercase();
            format!("/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid}.slice")
        }
    }
}

fn cgroupfs_pod(qos: &str, uid: &str) -> String {
    match qos {
        "Guaranteed" => format!("/kubepods/pod{uid}"),
        q => format!("/kubepods/{}/pod{uid}", q.to_lowercase()),
    }
}

/// Creates a pod cgroup and one container cgroup in it, as kubelet and the runtime do.
fn start_container(pod_cgroup: &str, leaf: &str) -> Result<Cgroup> {
    let pod = Cgroup::create(pod_cgroup)?;
    pod.child(leaf)
}

fn pending_of(status: &Value) -> Vec<String> {
    fixtures::profile_strings(status, "web-pods", "pending")
}

pub fn pods_are_governed_from_their_first_exec(ctx: &mut Ctx) -> Result<()> {
    fixtures::denied_busybox()?;
    let api = FakeApi::start(KUBECONFIG)?;
    let web = json!({"app": "web"});
    api.apply(pod(NODE, "web", "web-1", &uid(1), web.clone(), "Burstable"));
    api.apply(pod(
        NODE,
        "web",
        "web-2",
        &uid(2),
        web.clone(),
        "Guaranteed",
    ));
    api.apply(pod(
        NODE,
        "batch",
        "batch-1",
        &uid(3),
        json!({"app": "batch"}),
        "BestEffort",
    ));
    // Another node's pod: not listed to this node's daemon (the field selector filters it
    // on a real API server; this stand-in serves all, so keep it out of the list).

    let dir = fixtures::profile_dir("kubernetes_pods")?;
    let body = format!(
        "  exec:\n    default: allow\n    deny: [{DENIED_BUSYBOX}]\n{FILES_ALLOW_ALL}{CONNECT_ALLOW_ALL}"
    );
    let yaml = fixtures::profile("web-pods", "PLACEHOLDER", "enforce", "deny", &body).replace(
        "    cgroup: PLACEHOLDER",
        "    kubernetes: {namespace: web, podLabels: {app: web}}",
    );
    fixtures::write_profile(&dir, "web.yaml", &yaml)?;
    // An operator-governed QoS cgroup (cgroupfs BestEffort): its pods are governed by it as
    // descendants, even pods the daemon knows and no kubernetes profile selects.
    let besteffort = Cgroup::create("/kubepods/besteffort")?;
    let ancestor = fixtures::profile("besteffort-pods", &besteffort.rel, "enforce", "deny", &body);
    fixtures::write_profile(&dir, "besteffort.yaml", &ancestor)?;
    api.apply(pod(
        NODE,
        "batch",
        "batch-9",
        &uid(9),
        json!({"app": "batch"}),
        "BestEffort",
    ));
    ctx.start_daemon_env(
        &dir,
        &["--node-default", "deny-exec"],
        &[("KUBECONFIG", KUBECONFIG), ("NODE_NAME", NODE)],
        "daemon_ready",
    )?;

    let status = status_json().map_err(anyhow::Error::msg)?;
    let pending = pending_of(&status);
    let want = [
        systemd_pod("Burstable", &uid(1)),
        cgroupfs_pod("Burstable", &uid(1)),
        systemd_pod("Guaranteed", &uid(2)),
        cgroupfs_pod("Guaranteed", &uid(2)),
    ];
    ctx.check(
        "listed_pods_are_expected_for_both_drivers",
        want.iter().all(|w| pending.contains(w)) && pending.len() == 4,
        format!("pending {want:?}"),
        format!("pending {pending:?}"),
        None,
    );

    // systemd driver, containerd: the pod and container cgroups appear after the profile.
    let c1 = start_container(
        &systemd_pod("Burstable", &uid(1)),
        &format!("cri-containerd-{CONTAINER_ID}.scope"),
    )?;
    let r = exec_in(Some(&c1), &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("containerd_systemd_first_exec_denied", &Outcome::EPERM, &r);
    let r = exec_in(Some(&c1), &Exec::path(BUSYBOX, &["busybox", "true"]));
    ctx.expect(
        "containerd_systemd_allowed_exec_runs",
        &Outcome::Exited(0),
        &r,
    );

    // cgroupfs driver, CRI-O.
    let c2 = start_container(
        &cgroupfs_pod("Guaranteed", &uid(2)),
        &format!("crio-{CONTAINER_ID}"),
    )?;
    let r = exec_in(Some(&c2), &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("crio_cgroupfs_first_exec_denied", &Outcome::EPERM, &r);

    // A known pod no profile selects: left alone from its first exec.
    let c3 = start_container(
        &systemd_pod("BestEffort", &uid(3)),
        &format!("cri-containerd-{CONTAINER_ID}.scope"),
    )?;
    let r = exec_in(Some(&c3), &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("known_unselected_pod_not_governed", &Outcome::Exited(0), &r);

    // A known, unselected pod below an operator-governed cgroup stays governed by it.
    let c9 = start_container(&cgroupfs_pod("BestEffort", &uid(9)), CONTAINER_ID)?;
    let r = exec_in(Some(&c9), &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect(
        "known_pod_under_a_governed_ancestor_stays_governed",
        &Outcome::EPERM,
        &r,
    );

    // A pod cgroup before its pod is known: the node default (deny-exec) governs it, until the
    // pod is listed and turns out to match no profile.
    let c4 = start_container(&cgroupfs_pod("Burstable", &uid(4)), CONTAINER_ID)?;
    let r = exec_in(Some(&c4), &Exec::path(BUSYBOX, &["busybox", "true"]));
    ctx.expect(
        "unknown_pod_gets_node_default_deny_exec",
        &Outcome::EPERM,
        &r,
    );
    api.apply(pod(
        NODE,
        "batch",
        "batch-2",
        &uid(4),
        json!({"app": "batch"}),
        "Burstable",
    ));
    let released = fixtures::wait_until(Duration::from_secs(10), || {
        exec_in(Some(&c4), &Exec::path(BUSYBOX, &["busybox", "true"])).outcome == Outcome::Exited(0)
    });
    ctx.check(
        "node_default_released_once_the_pod_is_known",
        released.is_some(),
        "exec runs within 10 s of the pod's ADDED event",
        format!("{released:?}"),
        None,
    );

    // New pods: time from the ADDED event to their cgroups being expected in the kernel.
    let mut latencies = Vec::new();
    for n in 10..15 {
        let u = uid(n);
        let path = systemd_pod("Burstable", &u);
        api.apply(pod(
            NODE,
            "web",
            &format!("web-{n}"),
            &u,
            web.clone(),
            "Burstable",
        ));
        let t = fixtures::wait_until(Duration::from_secs(10), || {
            status_json().is_ok_and(|s| pending_of(&s).contains(&path))
        });
        latencies.push(t);
    }
    let mut ms: Vec<u128> = latencies
        .iter()
        .flatten()
        .map(Duration::as_millis)
        .collect();
    ms.sort_unstable();
    ctx.note(&format!(
        "pod ADDED -> pod cgroup expected in the kernel (seen in status): {ms:?} ms"
    ));
    ctx.check(
        "added_pods_expected_within_10_s",
        ms.len() == latencies.len(),
        "every ADDED pod expected within 10 s",
        format!("{ms:?} ms"),
        None,
    );
    let c5 = start_container(
        &systemd_pod("Burstable", &uid(14)),
        &format!("cri-containerd-{CONTAINER_ID}.scope"),
    )?;
    let r = exec_in(Some(&c5), &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("pod_added_later_first_exec_denied", &Outcome::EPERM, &r);

    // Decisions name the pod, and the container once the pod's status gives its id.
    let mut web1 = pod(NODE, "web", "web-1", &uid(1), web.clone(), "Burstable");
    web1["status"]["containerStatuses"] =
        json!([{"name": "app", "containerID": format!("containerd://{CONTAINER_ID2}")}]);
    api.apply(web1);
    // The pod event takes ~150 ms to reach the catalog (see the latencies above).
    std::thread::sleep(Duration::from_secs(2));
    let c6 = Cgroup::create(&format!(
        "{}/cri-containerd-{CONTAINER_ID2}.scope",
        systemd_pod("Burstable", &uid(1))
    ))?;
    let r = exec_in(Some(&c6), &Exec::path(DENIED_BUSYBOX, &["busybox", "true"]));
    ctx.expect("container_exec_denied", &Outcome::EPERM, &r);
    let want = json!({"namespace": "web", "pod": "web-1", "container": "app"});
    let found = ctx
        .daemon
        .as_mut()
        .and_then(|d| d.wait_decision(Duration::from_secs(10), |v| v["pid"] == r.pid));
    ctx.check(
        "decision_names_pod_and_container",
        found.as_ref().is_some_and(|v| v["k8s"] == want),
        format!("k8s {want}"),
        format!("{found:?}"),
        None,
    );

    // A deleted pod is no longer expected.
    api.delete(&uid(1));
    let gone = fixtures::wait_until(Duration::from_secs(10), || {
        status_json().is_ok_and(|s| !pending_of(&s).contains(&systemd_pod("Burstable", &uid(1))))
    });
    ctx.check(
        "deleted_pod_no_longer_expected",
        gone.is_some(),
        "its paths leave `pending` within 10 s",
        format!("{gone:?}"),
        None,
    );

    ctx.stop_daemon("daemon_stops_on_sigterm");
    for cg in [c6, c1, c2, c3, c4, c5, c9] {
        let _ = std::fs::remove_dir(cg.dir());
    }
    Ok(())
}
