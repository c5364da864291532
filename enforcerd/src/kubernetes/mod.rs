//! Kubernetes pods on this node and where their cgroups are, for `kubernetes` selectors.
//!
//! Pure userspace: [`watch_pods`] keeps the set of pods bound to this node (`spec.nodeName`)
//! up to date from the API server and publishes it as a whole on a `tokio::sync::watch`
//! channel; [`pod_cgroup`] and [`container_cgroup`] compute the cgroup v2 paths kubelet and the
//! container runtime give a pod and its containers. The naming rules and their sources are in
//! `docs/kubernetes-cgroups.md`.
use std::{collections::BTreeMap, path::Path, pin::pin, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{
    Api,
    config::{Config, KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        utils::Backoff,
        watcher::{self, DefaultBackoff, Event},
    },
};

#[cfg(test)]
mod tests;

/// A pod's quality-of-service class (`status.qosClass`): it decides the pod cgroup's parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name the API uses: `Guaranteed`, `Burstable`, `BestEffort`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    fn parse(s: &str) -> Option<QosClass> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

/// One container of a pod (init containers, sidecars included, then the regular ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    /// runtime and id from status.containerStatuses[].containerID ("containerd://<id>",
    /// "cri-o://<id>"), None until started (or for another runtime, or an id that is not
    /// plain alphanumeric).
    pub id: Option<(Runtime, String)>,
}

/// The CRI runtime that started a container, from the scheme of its `containerID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
}

/// The cgroup driver kubelet and the runtime are configured with (`cgroupDriver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    /// Both drivers: a node's driver is not known in advance, so enforcerd expects a pod's
    /// cgroups under either.
    pub const ALL: [Driver; 2] = [Driver::Systemd, Driver::Cgroupfs];

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }
}

/// What enforcerd needs to know about a pod bound to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub qos: QosClass,
    pub containers: Vec<ContainerInfo>,
}

/// The pods bound to this node, by uid; published as a whole after every change.
pub type Pods = Arc<BTreeMap<String, PodInfo>>;

/// Where the pod cgroups of `qos` are created, and the level a pod cgroup has there.
fn qos_prefix(qos: QosClass, driver: Driver) -> (&'static str, u32) {
    match (driver, qos) {
        (Driver::Systemd, QosClass::Guaranteed) => ("/kubepods.slice/kubepods-pod", 2),
        (Driver::Systemd, QosClass::Burstable) => (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod",
            3,
        ),
        (Driver::Systemd, QosClass::BestEffort) => (
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod",
            3,
        ),
        (Driver::Cgroupfs, QosClass::Guaranteed) => ("/kubepods/pod", 2),
        (Driver::Cgroupfs, QosClass::Burstable) => ("/kubepods/burstable/pod", 3),
        (Driver::Cgroupfs, QosClass::BestEffort) => ("/kubepods/besteffort/pod", 3),
    }
}

/// Pod-level cgroup path (below the cgroup2 mount, leading '/') for this driver, e.g.
/// systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with '-' -> '_'>.slice  (Guaranteed: /kubepods.slice/kubepods-pod<uid_>.slice)
/// cgroupfs: /kubepods/burstable/pod<uid>  (Guaranteed: /kubepods/pod<uid>)
pub fn pod_cgroup(pod: &PodInfo, driver: Driver) -> String {
    let (prefix, _) = qos_prefix(pod.qos, driver);
    match driver {
        // kubelet escapes '-' (systemd's slice hierarchy separator) as '_' in every component.
        Driver::Systemd => format!("{prefix}{}.slice", pod.uid.replace('-', "_")),
        Driver::Cgroupfs => format!("{prefix}{}", pod.uid),
    }
}

/// The cgroup level (number of path components) of `pod_cgroup(pod, driver)`.
pub fn pod_cgroup_level(pod: &PodInfo, driver: Driver) -> u32 {
    qos_prefix(pod.qos, driver).1
}

/// A container's cgroup below its pod's, when its id is known:
/// systemd: <pod>/cri-containerd-<id>.scope (containerd), <pod>/crio-<id>.scope (CRI-O)
/// cgroupfs: <pod>/<id> (containerd), <pod>/crio-<id> (CRI-O)
pub fn container_cgroup(pod: &PodInfo, container: &str, driver: Driver) -> Option<String> {
    let (runtime, id) = pod
        .containers
        .iter()
        .find(|c| c.name == container)?
        .id
        .as_ref()?;
    let leaf = match (driver, runtime) {
        (Driver::Systemd, Runtime::Containerd) => format!("cri-containerd-{id}.scope"),
        (Driver::Systemd, Runtime::CriO) => format!("crio-{id}.scope"),
        (Driver::Cgroupfs, Runtime::Containerd) => id.clone(),
        (Driver::Cgroupfs, Runtime::CriO) => format!("crio-{id}"),
    };
    Some(format!("{}/{leaf}", pod_cgroup(pod, driver)))
}

/// The prefixes under which pod cgroups of each QoS class appear for a driver, each with the level a pod cgroup has there
/// (e.g. ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod", 3), ("/kubepods/burstable/pod", 3)); used for the node default (a pod cgroup that appears before its pod is known).
///
/// In the order Guaranteed, Burstable, BestEffort. No prefix is a prefix of another.
pub fn pod_cgroup_prefixes(driver: Driver) -> Vec<(String, u32)> {
    [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ]
    .into_iter()
    .map(|qos| {
        let (prefix, level) = qos_prefix(qos, driver);
        (prefix.to_string(), level)
    })
    .collect()
}

/// The driver whose kubepods root exists below the cgroup2 mount `cgroup_mount`
/// (`kubepods.slice` for systemd, `kubepods` for cgroupfs), if exactly one does.
pub fn detect_driver(cgroup_mount: &Path) -> Option<Driver> {
    let systemd = cgroup_mount.join("kubepods.slice").is_dir();
    let cgroupfs = cgroup_mount.join("kubepods").is_dir();
    match (systemd, cgroupfs) {
        (true, false) => Some(Driver::Systemd),
        (false, true) => Some(Driver::Cgroupfs),
        _ => None,
    }
}

/// Whether a pod matches a kubernetes selector: same namespace and every selector label present with the same value.
pub fn matches(namespace: &str, pod_labels: &BTreeMap<String, String>, pod: &PodInfo) -> bool {
    pod.namespace == namespace
        && pod_labels
            .iter()
            .all(|(k, v)| pod.labels.get(k).is_some_and(|pv| pv == v))
}

/// Node name from `$NODE_NAME` (set by the DaemonSet from `spec.nodeName` via the downward API).
pub fn node_name() -> Option<String> {
    non_empty(std::env::var("NODE_NAME").ok())
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "KUBERNETES_SERVICE_HOST is set but the in-cluster configuration (service account token \
         and CA in /var/run/secrets/kubernetes.io/serviceaccount) is unusable: {0}"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot load the kubeconfig {origin}: {source}")]
    Kubeconfig {
        /// `from $KUBECONFIG (...)` or the file's path.
        origin: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot create a Kubernetes client for {cluster_url}: {source}")]
    Client {
        cluster_url: String,
        #[source]
        source: kube::Error,
    },
}

/// A client when running in a pod (KUBERNETES_SERVICE_HOST) or with a kubeconfig ($KUBECONFIG or ~/.kube/config); Ok(None) when neither exists (then kubernetes selectors are inactive).
pub async fn client() -> Result<Option<kube::Client>, KubeError> {
    let config = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) {
        Config::incluster().map_err(KubeError::InCluster)?
    } else {
        let env_origin = || {
            format!(
                "from $KUBECONFIG ({})",
                std::env::var_os("KUBECONFIG")
                    .unwrap_or_default()
                    .to_string_lossy()
            )
        };
        let (kubeconfig, origin) = match Kubeconfig::from_env() {
            Ok(Some(kubeconfig)) => (kubeconfig, env_origin()),
            Err(source) => {
                return Err(KubeError::Kubeconfig {
                    origin: env_origin(),
                    source,
                });
            }
            // $KUBECONFIG unset or empty.
            Ok(None) => {
                let Some(path) = std::env::home_dir()
                    .map(|home| home.join(".kube").join("config"))
                    .filter(|path| path.exists())
                else {
                    return Ok(None);
                };
                let origin = path.display().to_string();
                match Kubeconfig::read_from(&path) {
                    Ok(kubeconfig) => (kubeconfig, origin),
                    Err(source) => return Err(KubeError::Kubeconfig { origin, source }),
                }
            }
        };
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| KubeError::Kubeconfig { origin, source })?
    };
    // rustls needs a process-wide crypto provider; kube is built with ring only, but be
    // explicit so that another dependency enabling aws-lc-rs cannot make the choice ambiguous.
    // An error means one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster_url = config.cluster_url.to_string();
    kube::Client::try_from(config)
        .map(Some)
        .map_err(|source| KubeError::Client {
            cluster_url,
            source,
        })
}

/// Watches the pods with spec.nodeName=node (field selector) and sends the full set after every change (the initial list, each ADDED/MODIFIED/DELETED, and a re-list after 410 Gone).
/// Runs until the receiver is dropped. Errors from the API server are retried with backoff and logged with tracing::warn (never a busy loop).
///
/// Every completed (re-)list is published, even when it changes nothing, so a receiver knows
/// the set is complete; single events are published only when they change a [`PodInfo`]
/// (status updates such as readiness are not). Pods that have terminated (phase `Succeeded`
/// or `Failed`: no process left, their cgroups are gone) are left out. The backoff is
/// kube's default (client-go's: 0.8 s doubling to 30 s, with jitter); a 410 Gone is logged at
/// info, as it is part of the protocol.
pub async fn watch_pods(client: kube::Client, node: String, tx: tokio::sync::watch::Sender<Pods>) {
    watch_pods_with(client, node, tx, DefaultBackoff::default).await
}

/// [`watch_pods`] with another backoff (tests use a short one).
async fn watch_pods_with<B: Backoff>(
    client: kube::Client,
    node: String,
    tx: tokio::sync::watch::Sender<Pods>,
    backoff: impl Fn() -> B,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    // The watcher stream never ends; only a backoff that gives up (the default never does)
    // ends it, and then the watch starts afresh, a second later.
    loop {
        let mut stream = pin!(watcher::watcher(api.clone(), config.clone()).backoff(backoff()));
        let mut pods = BTreeMap::new();
        // Pods of a (re-)list in progress: published as a whole when it is complete.
        let mut listing: Option<BTreeMap<String, PodInfo>> = None;
        loop {
            let event = tokio::select! {
                biased;
                () = tx.closed() => return,
                event = stream.next() => event,
            };
            match event {
                None => break,
                Some(Ok(Event::Init)) => listing = Some(BTreeMap::new()),
                Some(Ok(Event::InitApply(pod))) => {
                    if let (Some(listing), Some(info)) = (listing.as_mut(), pod_info(&pod)) {
                        listing.insert(info.uid.clone(), info);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    pods = listing.take().unwrap_or_default();
                    tracing::debug!("pods of node {node}: listed {}", pods.len());
                    tx.send_replace(Arc::new(pods.clone()));
                }
                Some(Ok(Event::Apply(pod))) => {
                    let changed = match pod_info(&pod) {
                        Some(info) if pods.get(&info.uid) == Some(&info) => false,
                        Some(info) => {
                            pods.insert(info.uid.clone(), info);
                            true
                        }
                        // Terminated (or unusable): gone from the node's set.
                        None => pod
                            .metadata
                            .uid
                            .as_ref()
                            .is_some_and(|uid| pods.remove(uid).is_some()),
                    };
                    if changed {
                        tx.send_replace(Arc::new(pods.clone()));
                    }
                }
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(uid) = &pod.metadata.uid
                        && pods.remove(uid).is_some()
                    {
                        tx.send_replace(Arc::new(pods.clone()));
                    }
                }
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    tracing::info!(
                        "pods of node {node}: the watch expired (410 Gone: {}); listing them again",
                        status.message
                    );
                }
                Some(Err(e)) => {
                    tracing::warn!("pods of node {node}: {e}; retrying with backoff");
                }
            }
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// The [`PodInfo`] of an API `Pod`; None for a pod without uid, namespace or name, with a uid
/// that could not name a cgroup, or that has terminated.
fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let uid = meta.uid.as_ref()?;
    // A uid is a UUID; anything else (a path separator, ..) must not reach a cgroup path.
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        tracing::warn!(
            "ignoring pod {:?}: its uid {uid:?} is not a UUID",
            meta.name
        );
        return None;
    }
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let ids: BTreeMap<&str, (Runtime, String)> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .filter_map(|cs| {
            Some((
                cs.name.as_str(),
                parse_container_id(cs.container_id.as_deref()?)?,
            ))
        })
        .collect();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .map(|c| ContainerInfo {
            name: c.name.clone(),
            id: ids.get(c.name.as_str()).cloned(),
        })
        .collect();
    Some(PodInfo {
        uid: uid.clone(),
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        labels: meta.labels.clone().unwrap_or_default(),
        qos: status
            .and_then(|s| s.qos_class.as_deref())
            .and_then(QosClass::parse)
            .unwrap_or_else(|| spec.map_or(QosClass::BestEffort, compute_qos)),
        containers,
    })
}

/// `containerd://<id>` or `cri-o://<id>` (kubelet's `<runtime name>://<id>`); None for
/// another runtime, or an id that is not plain alphanumeric (it becomes part of a path).
fn parse_container_id(id: &str) -> Option<(Runtime, String)> {
    let (scheme, id) = id.split_once("://")?;
    let runtime = match scheme {
        "containerd" => Runtime::Containerd,
        "cri-o" => Runtime::CriO,
        _ => return None,
    };
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| (runtime, id.to_string()))
}

/// The QoS class of a pod whose `status.qosClass` is missing, computed from its spec as the API
/// server does when it creates the pod (`ComputePodQOS` in
/// `pkg/apis/core/v1/helper/qos/qos.go`): pod-level resources when present, else every
/// init and regular container's; only cpu and memory count; a missing request defaults to
/// the limit (as API defaulting does).
fn compute_qos(spec: &PodSpec) -> QosClass {
    if let Some(resources) = &spec.resources {
        return resource_qos(resources);
    }
    let mut pod_qos = None;
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let qos = container
            .resources
            .as_ref()
            .map_or(QosClass::BestEffort, resource_qos);
        match pod_qos {
            _ if qos == QosClass::Burstable => return QosClass::Burstable,
            None => pod_qos = Some(qos),
            Some(q) if q != qos => return QosClass::Burstable,
            Some(_) => {}
        }
    }
    pod_qos.unwrap_or(QosClass::BestEffort)
}

/// `resourceQOS` of one set of requirements.
fn resource_qos(resources: &ResourceRequirements) -> QosClass {
    let empty = BTreeMap::new();
    let requests = resources.requests.as_ref().unwrap_or(&empty);
    let limits = resources.limits.as_ref().unwrap_or(&empty);
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    let mut qos = None;
    for resource in ["cpu", "memory"] {
        let limit = limits.get(resource);
        let request = requests.get(resource).or(limit);
        if !quantities_equal(request, limit) {
            return QosClass::Burstable;
        }
        let best_effort = is_zero(request) && is_zero(limit);
        match qos {
            None => {
                qos = Some(if best_effort {
                    QosClass::BestEffort
                } else {
                    QosClass::Guaranteed
                })
            }
            Some(q) if best_effort != (q == QosClass::BestEffort) => return QosClass::Burstable,
            Some(_) => {}
        }
    }
    qos.unwrap_or(QosClass::BestEffort)
}

/// Numeric equality of two quantities, absent meaning zero; unparseable ones are equal only
/// if spelled the same.
fn quantities_equal(a: Option<&Quantity>, b: Option<&Quantity>) -> bool {
    let a = a.map_or("0", |q| q.0.as_str());
    let b = b.map_or("0", |q| q.0.as_str());
    match (parse_quantity(a), parse_quantity(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

fn is_zero(q: Option<&Quantity>) -> bool {
    q.is_none_or(|q| parse_quantity(&q.0) == Some((0, 0)))
}

/// A Kubernetes quantity (`500m`, `1.5Gi`, `2e3`, `128974848`) as `mantissa * 10^exponent`
/// with no trailing zero in the mantissa (zero is `(0, 0)`), so that equal values compare
/// equal; None if it is malformed, negative or too large.
fn parse_quantity(s: &str) -> Option<(u128, i32)> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let mut mantissa: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(b - b'0'))?;
    }
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exp.parse().ok().filter(|e: &i32| e.abs() <= 1000)?, 0)
        }
    };
    let mut mantissa = mantissa.checked_mul(1u128.checked_shl(exp2)?)?;
    let mut exponent = exp10 - i32::try_from(frac.len()).ok()?;
    if mantissa == 0 {
        return Some((0, 0));
    }
    while mantissa % 10 == 0 {
        mantissa /= 10;
        exponent += 1;
    }
    Some((mantissa, exponent))
}
