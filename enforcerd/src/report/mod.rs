//! Decision records from the kernel -> enriched decisions (spec "Decisions") -> JSON lines.
pub mod hub;
pub mod journal;
pub mod reader;
pub mod render;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use enforcerd_common::{
    AggKey, EVENT_PATH_BYTES, EXE_PATH_BYTES, Event, access, decision, family, hook, protocol,
    reason,
};
use serde::{Deserialize, Serialize};

pub use self::hub::Hub;
use crate::{control::DecisionCounts, metrics::Metrics};

/// What reports say about a loaded profile.
#[derive(Clone, Debug)]
pub struct ProfileMeta {
    pub name: String,
    pub serial: u64,
    pub sha256: String,
    pub mode: &'static str,
    /// Governed cgroup paths, to find child cgroups quickly.
    pub cgroups: Vec<String>,
}

/// What the daemon knows about profiles and cgroups, published as an immutable snapshot at
/// every reload.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// By profile id. Ids of replaced versions stay, for records still in flight.
    pub profiles: HashMap<u32, ProfileMeta>,
    /// Cgroup id -> path of governed cgroups.
    pub cgroups: HashMap<u64, String>,
    /// Pod and container cgroup paths (both drivers) -> their pod and container.
    pub k8s: HashMap<String, K8s>,
}

impl Catalog {
    /// The pod of the nearest ancestor of `cgroup` (or itself) that is a pod's or a
    /// container's cgroup.
    pub fn k8s_of(&self, cgroup: &str) -> Option<K8s> {
        let mut path = cgroup;
        loop {
            if let Some(k) = self.k8s.get(path) {
                return Some(k.clone());
            }
            path = &path[..path.rfind('/')?];
            if path.is_empty() {
                return None;
            }
        }
    }
}

/// What the daemon and the decision reader share. Each lock is held only to swap a snapshot
/// or copy a small map, never while a record is processed: the reader runs flat out under a
/// flood of denials and must not starve reloads or status requests.
pub struct Shared {
    pub catalog: Mutex<Arc<Catalog>>,
    /// Decisions reported per profile name (summaries add their count).
    pub decisions: Mutex<HashMap<String, DecisionCounts>>,
    /// Records read from the ring buffer, per hook (index `hook::*`).
    pub reported: [AtomicU64; 4],
    /// Recent decision lines and live followers (`enforcerd events`).
    pub hub: Hub,
    pub metrics: Option<Arc<Metrics>>,
}

impl Shared {
    pub fn new(history: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Shared {
            catalog: Mutex::default(),
            decisions: Mutex::default(),
            reported: Default::default(),
            hub: Hub::new(history),
            metrics,
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn publish(&self, catalog: Catalog) {
        *self.catalog.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
    }

    pub fn decisions(&self) -> HashMap<String, DecisionCounts> {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reported(&self, hook: u8) -> u64 {
        self.reported
            .get(usize::from(hook))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One line of the decision report (spec.md "Decisions"): printed as one JSON object per line,
/// journaled, and streamed by `enforcerd events`. Either one decision the kernel reported
/// (`count` 1), or a summary of identical decisions the kernel folded into a counter
/// (`summary` true, `count` >= 1): those repeat the fields of the decision that opened the
/// aggregation window (its pid, comm and exe are that decision's), `first_ts` is when that
/// window opened and `ts` when the summary was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub ts: String,
    /// `exec`, `file` or `connect`.
    pub hook: String,
    /// `deny`, `kill` or `audit`.
    pub decision: String,
    /// `rule`, `default`, `path-unresolved`, `read-failed` or `contended`.
    pub reason: String,
    pub profile: String,
    pub serial: u64,
    pub sha256: String,
    /// `enforce` or `audit`.
    pub mode: String,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// A path, `a.b.c.d:port` or `[ipv6]:port`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_truncated: Option<bool>,
    /// File hook: `read`, `write` or `read,write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// Connect hook: `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// How many decisions this line stands for.
    pub count: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub summary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ts: Option<String>,
    /// The pod (and container, once its id is known) of a decision in a pod's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8s>,
}

/// Kubernetes identity of a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8s {
    pub namespace: String,
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Reads a record from ring buffer bytes (which carry no alignment guarantee for us).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked and Event is plain old data.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// The kernel's boot-time clock, to date records (`bpf_ktime_get_boot_ns`).
pub fn boot_ns_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// RFC 3339 wall time of a record stamped `boot_ns`, given both clocks read now.
pub fn wall_time(boot_ns: u64, now_boot_ns: u64, now_unix_ns: i128) -> String {
    let at = now_unix_ns - i128::from(now_boot_ns.saturating_sub(boot_ns));
    time::OffsetDateTime::from_unix_timestamp_nanos(at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Enriches one record. `cgroup` and `exe` are looked up by the caller (they need the
/// filesystem).
pub fn describe(
    e: &Event,
    catalog: &Catalog,
    cgroup: Option<String>,
    ts: String,
    exe: Option<String>,
) -> Decision {
    let meta = catalog.profiles.get(&e.profile_id).cloned();
    let k8s = cgroup.as_deref().and_then(|c| catalog.k8s_of(c));
    let (target, truncated) = target(e);
    Decision {
        ts,
        hook: hook_name(e.hook).into(),
        decision: match e.decision {
            decision::DENY => "deny",
            decision::KILL => "kill",
            decision::AUDIT => "audit",
            _ => "unknown",
        }
        .into(),
        reason: match e.reason {
            reason::RULE => "rule",
            reason::DEFAULT => "default",
            reason::PATH_UNRESOLVED => "path-unresolved",
            reason::READ_FAILED => "read-failed",
            reason::CONTENDED => "contended",
            reason::LINK => "link",
            reason::RENAME => "rename",
            reason::MOUNT_ALIAS => "mount-alias",
            _ => "unknown",
        }
        .into(),
        profile: meta
            .as_ref()
            .map_or_else(|| format!("#{}", e.profile_id), |m| m.name.clone()),
        serial: meta.as_ref().map_or(0, |m| m.serial),
        sha256: meta.as_ref().map_or_else(String::new, |m| m.sha256.clone()),
        mode: meta.as_ref().map_or("unknown", |m| m.mode).into(),
        pid: e.pid,
        tid: e.tid,
        ppid: e.ppid,
        uid: e.uid,
        comm: c_string(&e.comm),
        exe,
        cgroup_id: e.cgroup_id,
        cgroup,
        target,
        target_truncated: truncated.then_some(true),
        access: (e.hook == hook::FILE).then_some(
            match e.access & (access::READ | access::WRITE) {
                a if a == access::READ | access::WRITE => "read,write",
                access::READ => "read",
                access::WRITE => "write",
                _ => "none",
            }
            .into(),
        ),
        protocol: (e.hook == hook::CONNECT).then_some(
            match e.protocol {
                protocol::TCP => "tcp",
                protocol::UDP => "udp",
                _ => "other",
            }
            .into(),
        ),
        count: 1,
        summary: false,
        first_ts: None,
        k8s,
    }
}

pub fn hook_name(h: u8) -> &'static str {
    match h {
        hook::EXEC => "exec",
        hook::FILE => "file",
        hook::CONNECT => "connect",
        _ => "unknown",
    }
}

/// The aggregation key the kernel used for this record (see `enforcerd_common::AggKey`).
pub fn agg_key(e: &Event) -> AggKey {
    AggKey {
        cgroup_id: e.cgroup_id,
        inode: e.inode,
        profile_id: e.profile_id,
        hook: e.hook,
        decision: e.decision,
        access: e.access,
        protocol: e.protocol,
        family: e.family,
        _pad: 0,
        port: e.port,
        dev: e.dev,
        addr: e.addr,
    }
}

/// The executable path the kernel captured, if it could.
pub fn exe_in_record(e: &Event) -> Option<String> {
    let start = usize::try_from(e.exe_start).ok()?;
    let bytes = e.exe.get(start..EXE_PATH_BYTES)?;
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The decision's target: a path, or `ip:port` / `[ipv6]:port`; and whether it was cut.
fn target(e: &Event) -> (String, bool) {
    if e.hook == hook::CONNECT {
        let ip = if e.family == family::IPV4 {
            Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string()
        } else {
            format!("[{}]", Ipv6Addr::from(e.addr))
        };
        return (format!("{ip}:{}", e.port), false);
    }
    if e.path_len <= 0 {
        return (String::new(), false);
    }
    let truncated = e.path_len as usize > EVENT_PATH_BYTES;
    (c_string(&e.path), truncated)
}

/// `readlink /proc/PID/exe`, if the process still exists.
pub fn exe_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(h: u8) -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.hook = h;
        e.decision = decision::DENY;
        e.reason = reason::RULE;
        e.profile_id = 7;
        e.pid = 42;
        e.tid = 43;
        e.ppid = 1;
        e.uid = 1000;
        e.cgroup_id = 99;
        e.comm[..4].copy_from_slice(b"curl");
        e
    }

    fn catalog() -> Catalog {
        let mut profiles = HashMap::new();
        profiles.insert(
            7,
            ProfileMeta {
                name: "web".into(),
                serial: 3,
                sha256: "sha256:ab".into(),
                mode: "enforce",
                cgroups: vec!["/web".into()],
            },
        );
        Catalog {
            profiles,
            cgroups: HashMap::from([(99, "/web".into())]),
            k8s: HashMap::from([
                ("/kubepods/pod1".into(), pod_ref(None)),
                ("/kubepods/pod1/abc".into(), pod_ref(Some("app"))),
            ]),
        }
    }

    fn pod_ref(container: Option<&str>) -> K8s {
        K8s {
            namespace: "web".into(),
            pod: "web-1".into(),
            container: container.map(str::to_owned),
        }
    }

    #[test]
    fn decisions_in_pod_cgroups_name_the_pod_and_known_containers() {
        let c = catalog();
        assert_eq!(c.k8s_of("/kubepods/pod1/abc"), Some(pod_ref(Some("app"))));
        assert_eq!(
            c.k8s_of("/kubepods/pod1/abc/nested"),
            Some(pod_ref(Some("app")))
        );
        assert_eq!(
            c.k8s_of("/kubepods/pod1/unknown-container"),
            Some(pod_ref(None))
        );
        assert_eq!(c.k8s_of("/kubepods/pod2"), None);
        assert_eq!(c.k8s_of("/web"), None);
        let d = describe(
            &event(hook::FILE),
            &c,
            Some("/kubepods/pod1/abc".into()),
            "t".into(),
            None,
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["k8s"],
            serde_json::json!({"namespace": "web", "pod": "web-1", "container": "app"})
        );
    }

    #[test]
    fn file_denial_names_path_access_profile_and_cgroup() {
        let mut e = event(hook::FILE);
        e.access = access::READ | access::WRITE;
        let p = b"/etc/shadow\0";
        e.path[..p.len()].copy_from_slice(p);
        e.path_len = p.len() as i32;
        let d = describe(
            &e,
            &catalog(),
            Some("/web".into()),
            "t".into(),
            Some("/usr/bin/curl".into()),
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ts": "t", "hook": "file", "decision": "deny", "reason": "rule", "profile": "web",
                "serial": 3, "sha256": "sha256:ab", "mode": "enforce", "pid": 42, "tid": 43,
                "ppid": 1, "uid": 1000, "comm": "curl", "exe": "/usr/bin/curl", "cgroup_id": 99,
                "cgroup": "/web", "target": "/etc/shadow", "access": "read,write", "count": 1
            })
        );
    }

    #[test]
    fn connect_targets_format_ipv4_and_ipv6() {
        let mut e = event(hook::CONNECT);
        e.protocol = protocol::UDP;
        e.family = family::IPV4;
        e.addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        e.port = 53;
        let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
        assert_eq!(
            (d.target.as_str(), d.protocol.as_deref(), d.access),
            ("10.1.2.3:53", Some("udp"), None)
        );
        e.family = family::IPV6;
        e.addr = Ipv6Addr::LOCALHOST.octets();
        e.protocol = protocol::TCP;
        e.port = 8080;
        let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
        assert_eq!(
            (d.target.as_str(), d.protocol.as_deref()),
            ("[::1]:8080", Some("tcp"))
        );
    }

    #[test]
    fn long_paths_are_marked_truncated_and_unknown_profiles_named_by_id() {
        let mut e = event(hook::EXEC);
        e.decision = decision::KILL;
        e.profile_id = 8;
        e.path.fill(b'a');
        e.path_len = 3000;
        let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
        assert_eq!(d.target.len(), EVENT_PATH_BYTES);
        assert_eq!(d.target_truncated, Some(true));
        assert_eq!(
            (d.profile.as_str(), d.decision.as_str(), d.hook.as_str()),
            ("#8", "kill", "exec")
        );
    }

    #[test]
    fn unresolved_path_has_an_empty_target_and_says_why() {
        let mut e = event(hook::FILE);
        e.reason = reason::PATH_UNRESOLVED;
        e.path_len = -36;
        let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
        assert_eq!(
            (d.target.as_str(), d.reason.as_str()),
            ("", "path-unresolved")
        );
    }

    #[test]
    fn alias_refusals_name_their_reason() {
        for (code, name) in [
            (reason::LINK, "link"),
            (reason::RENAME, "rename"),
            (reason::MOUNT_ALIAS, "mount-alias"),
        ] {
            let mut e = event(hook::FILE);
            e.reason = code;
            let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
            assert_eq!(d.reason, name);
        }
    }

    #[test]
    fn wall_time_subtracts_the_age_of_the_record() {
        // Record stamped 1.5 s before "now" (unix 1_700_000_000 s).
        let ts = wall_time(500_000_000, 2_000_000_000, 1_700_000_000_000_000_000);
        assert_eq!(ts, "2023-11-14T22:13:18.5Z");
    }

    #[test]
    fn decode_needs_a_whole_record() {
        assert!(decode(&[0u8; 10]).is_none());
        let bytes = vec![0u8; std::mem::size_of::<Event>()];
        assert_eq!(decode(&bytes).unwrap().pid, 0);
    }
}
