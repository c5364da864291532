//! Decision records from the kernel -> enriched decisions (spec "Decisions") -> JSON lines.
use std::{
    collections::HashMap,
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use enforcerd_common::{EVENT_PATH_BYTES, Event, access, decision, family, hook, protocol, reason};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{control::DecisionCounts, workload::CgroupFs};

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
}

/// What the daemon and the decision reader share. Each lock is held only to swap a snapshot
/// or copy a small map, never while a record is processed: the reader runs flat out under a
/// flood of denials and must not starve reloads or status requests.
#[derive(Default)]
pub struct Shared {
    pub catalog: Mutex<Arc<Catalog>>,
    /// Non-allow decisions reported per profile name.
    pub decisions: Mutex<HashMap<String, DecisionCounts>>,
}

impl Shared {
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
}

/// The reader's own state: paths of child cgroups it looked up, and counts not yet published.
struct Reader {
    cgroupfs: Option<CgroupFs>,
    learned: HashMap<u64, String>,
    counts: HashMap<String, DecisionCounts>,
}

impl Reader {
    fn cgroup_path(&mut self, catalog: &Catalog, id: u64, profile_id: u32) -> Option<String> {
        if let Some(p) = catalog.cgroups.get(&id).or_else(|| self.learned.get(&id)) {
            return Some(p.clone());
        }
        let under: Vec<&str> = catalog
            .profiles
            .get(&profile_id)
            .map(|p| p.cgroups.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let path = self.cgroupfs.as_ref()?.path_of(id, &under)?;
        self.learned.insert(id, path.clone());
        Some(path)
    }

    fn count(&mut self, d: &Decision) {
        let c = self.counts.entry(d.profile.clone()).or_default();
        match d.decision {
            "deny" => c.deny += 1,
            "kill" => c.kill += 1,
            "audit" => c.audit += 1,
            _ => {}
        }
    }
}

/// One non-allow decision, as printed (one JSON object per line) and, later, journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub ts: String,
    pub hook: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
    pub profile: String,
    pub serial: u64,
    pub sha256: String,
    pub mode: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
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
    let (target, truncated) = target(e);
    Decision {
        ts,
        hook: match e.hook {
            hook::EXEC => "exec",
            hook::FILE => "file",
            hook::CONNECT => "connect",
            _ => "unknown",
        },
        decision: match e.decision {
            decision::DENY => "deny",
            decision::KILL => "kill",
            decision::AUDIT => "audit",
            _ => "unknown",
        },
        reason: match e.reason {
            reason::RULE => "rule",
            reason::DEFAULT => "default",
            reason::PATH_UNRESOLVED => "path-unresolved",
            reason::READ_FAILED => "read-failed",
            reason::CONTENDED => "contended",
            _ => "unknown",
        },
        profile: meta
            .as_ref()
            .map_or_else(|| format!("#{}", e.profile_id), |m| m.name.clone()),
        serial: meta.as_ref().map_or(0, |m| m.serial),
        sha256: meta.as_ref().map_or_else(String::new, |m| m.sha256.clone()),
        mode: meta.as_ref().map_or("unknown", |m| m.mode),
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
        access: (e.hook == hook::FILE).then_some(match e.access & (access::READ | access::WRITE) {
            a if a == access::READ | access::WRITE => "read,write",
            access::READ => "read",
            access::WRITE => "write",
            _ => "none",
        }),
        protocol: (e.hook == hook::CONNECT).then_some(match e.protocol {
            protocol::TCP => "tcp",
            protocol::UDP => "udp",
            _ => "other",
        }),
    }
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

/// Records handled between two looks at the catalog and two publications of the counts.
const BATCH: usize = 256;

/// Reads decision records until the ring buffer or `out` fails, writing one JSON line each to
/// `out`.
pub async fn forward(
    ring: RingBuf<MapData>,
    shared: Arc<Shared>,
    cgroupfs: Option<CgroupFs>,
    mut out: impl Write,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until dropped, and
    // the AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut reader = Reader {
        cgroupfs,
        learned: HashMap::new(),
        counts: HashMap::new(),
    };
    loop {
        let mut guard = fd.readable_mut().await?;
        let mut drained = false;
        while !drained {
            let catalog = shared.catalog();
            let ring = guard.get_inner_mut();
            drained = true;
            for _ in 0..BATCH {
                let Some(item) = ring.next() else { break };
                let event = decode(&item);
                drop(item);
                drained = false;
                let Some(event) = event else { continue };
                let now_unix = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
                let ts = wall_time(event.boot_ns, boot_ns_now(), now_unix);
                let cgroup = reader.cgroup_path(&catalog, event.cgroup_id, event.profile_id);
                let d = describe(&event, &catalog, cgroup, ts, exe_of(event.pid));
                reader.count(&d);
                serde_json::to_writer(&mut out, &d)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            let mut decisions = shared.decisions.lock().unwrap_or_else(|e| e.into_inner());
            for (profile, c) in reader.counts.drain() {
                let total = decisions.entry(profile).or_default();
                total.deny += c.deny;
                total.kill += c.kill;
                total.audit += c.audit;
            }
        }
        guard.clear_ready();
    }
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
        }
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
                "cgroup": "/web", "target": "/etc/shadow", "access": "read,write"
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
            (d.target.as_str(), d.protocol, d.access),
            ("10.1.2.3:53", Some("udp"), None)
        );
        e.family = family::IPV6;
        e.addr = Ipv6Addr::LOCALHOST.octets();
        e.protocol = protocol::TCP;
        e.port = 8080;
        let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
        assert_eq!((d.target.as_str(), d.protocol), ("[::1]:8080", Some("tcp")));
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
            (d.profile.as_str(), d.decision, d.hook),
            ("#8", "kill", "exec")
        );
    }

    #[test]
    fn unresolved_path_has_an_empty_target_and_says_why() {
        let mut e = event(hook::FILE);
        e.reason = reason::PATH_UNRESOLVED;
        e.path_len = -36;
        let d = describe(&e, &catalog(), Some("/web".into()), "t".into(), None);
        assert_eq!((d.target.as_str(), d.reason), ("", "path-unresolved"));
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
