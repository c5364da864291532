//! Loads the embedded BPF object with the running kernel's offsets, writes a compiled plan
//! into its maps, and attaches the programs. Owns the loaded object: dropping an `Enforcer`
//! detaches the programs.
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        Lsm, ProgramError, RawTracePoint,
        links::{FdLink, PinnedLink},
    },
};
use std::time::Duration;

use enforcerd_common::{
    CGROUP_PATH_BYTES, CgroupPathKey, ExecRule, FileRule, NetKey, NetRule, PathKey, PendingCgroup,
    ProfileConfig, counter, globals, maps as names,
};

use std::os::fd::AsFd as _;

use super::{btf::Offsets, rcu::RcuBarrier};
pub use crate::report::reader::Reporting;
use crate::{compile::CompiledProfile, reconcile::KernelMaps};

/// The BPF programs, built by build.rs from `lsm-ebpf`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lsm-ebpf"));

/// (program name in the object, raw tracepoint): binding cgroups at creation. Attached at
/// load, before any profile is written: they only act on pending paths.
pub const TRACEPOINTS: [(&str, &str); 2] = [
    ("cgroup_mkdir", "cgroup_mkdir"),
    ("cgroup_rmdir", "cgroup_rmdir"),
];

/// (program name in the object, LSM hook).
pub const PROGRAMS: [(&str, &str); 12] = [
    ("bprm_check_security", "bprm_check_security"),
    ("file_open", "file_open"),
    ("socket_connect", "socket_connect"),
    // Destinations given to sendto/sendmsg (unconnected datagrams, TCP Fast Open), decided
    // by the connect rules.
    ("socket_sendmsg", "socket_sendmsg"),
    // `ld.so /denied/binary` with the loader allowed: the program ld.so maps is decided as an
    // exec (the exec hook marks the process, the exec's commit binds the mark to the new
    // image, the first executable mapping consumes it).
    ("bprm_committed_creds", "bprm_committed_creds"),
    ("mmap_file", "mmap_file"),
    // Links and renames by governed tasks may not give a file a name that allows more.
    ("path_link", "path_link"),
    ("path_rename", "path_rename"),
    // Keep file_open's remembered verdicts true to the paths (see lsm-ebpf's file_verdicts).
    ("inode_rename", "inode_rename"),
    ("inode_unlink", "inode_unlink"),
    ("inode_rmdir", "inode_rmdir"),
    ("d_instantiate", "d_instantiate"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this enforcerd binary was built without its BPF programs (AYA_BUILD_SKIP was set)")]
    NoObject,
    #[error("cannot read the kernel's BTF: {0}")]
    Btf(String),
    #[error("the kernel refused the BPF object: {0}")]
    Object(String),
    #[error("the kernel refused to load program {program}: {error}{log}")]
    Program {
        program: String,
        error: String,
        log: String,
    },
    #[error("cannot attach program {program} to LSM hook {hook}: {error}")]
    Attach {
        program: String,
        hook: String,
        error: String,
    },
    #[error("cannot pin {what}: {error}")]
    Pin { what: String, error: String },
    #[error("cannot write map {map}: {error}")]
    Map { map: &'static str, error: String },
}

/// What the kernel says about a loaded program.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: &'static str,
    pub verified_instructions: Option<u32>,
}

pub struct Enforcer {
    ebpf: Ebpf,
    pub programs: Vec<ProgramStats>,
    attached: bool,
    /// Links taken from their programs (program name, link), so that they can be pinned;
    /// pinned ones move to `pinned`.
    links: Vec<(&'static str, FdLink)>,
    pinned: Vec<PinnedLink>,
    barrier: RcuBarrier,
    ring_positions: Option<RingPositions>,
}

/// A read-only mapping of a BPF ring buffer's consumer and producer position pages (the
/// kernel allows any read-only mapping of a ring buffer).
struct RingPositions {
    base: *mut libc::c_void,
    page: usize,
}

// SAFETY: the mapping is read-only shared memory, valid until dropped.
unsafe impl Send for RingPositions {}
unsafe impl Sync for RingPositions {}

impl RingPositions {
    fn map(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh read-only shared mapping of two pages of the ring buffer's fd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingPositions { base, page })
    }

    fn used(&self) -> u64 {
        // SAFETY: both positions are the first u64 of their page, inside the mapping; the
        // kernel and the consumer update them atomically.
        unsafe {
            let consumer = std::ptr::read_volatile(self.base as *const u64);
            let producer =
                std::ptr::read_volatile(self.base.cast::<u8>().add(self.page) as *const u64);
            producer.saturating_sub(consumer)
        }
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base, 2 * self.page) };
    }
}

impl Enforcer {
    /// Loads the object and verifies the programs, without attaching them. Identical
    /// decisions less than `aggregation_window` apart are folded into one report (zero: each
    /// is reported).
    pub fn load(offsets: &Offsets, aggregation_window: Duration) -> Result<Self, LoadError> {
        if BPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let globals = offsets.globals();
        let window_ns = u64::try_from(aggregation_window.as_nanos()).unwrap_or(u64::MAX);
        let mut loader = EbpfLoader::new();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        loader.override_global(globals::AGG_WINDOW_NS, &window_ns, true);
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|e| LoadError::Object(format!("{e:#}")))?;
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
        let mut programs = Vec::new();
        let mut links = Vec::new();
        for (name, hook) in PROGRAMS {
            let program: &mut Lsm = program_mut(&mut ebpf, name)?;
            program
                .load(hook, &btf)
                .map_err(|e| program_error(name, e))?;
            let verified_instructions = program
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            programs.push(ProgramStats {
                name,
                verified_instructions,
            });
        }
        for (name, tracepoint) in TRACEPOINTS {
            let program: &mut RawTracePoint = program_mut(&mut ebpf, name)?;
            program.load().map_err(|e| program_error(name, e))?;
            let attach_error = |e: ProgramError| LoadError::Attach {
                program: name.into(),
                hook: format!("tracepoint {tracepoint}"),
                error: e.to_string(),
            };
            let id = program.attach(tracepoint).map_err(attach_error)?;
            links.push((name, program.take_link(id).map_err(attach_error)?.into()));
            programs.push(ProgramStats {
                name,
                verified_instructions: program
                    .info()
                    .ok()
                    .and_then(|i| i.verified_instruction_count()),
            });
        }
        let barrier = RcuBarrier::new()
            .map_err(|e| LoadError::Object(format!("cannot create the RCU barrier map: {e}")))?;
        Ok(Enforcer {
            ebpf,
            programs,
            attached: false,
            links,
            pinned: Vec::new(),
            barrier,
            ring_positions: None,
        })
    }

    /// Attaches the LSM programs. Call after the first reconcile, so that the first decision the
    /// programs make already sees every rule.
    pub fn attach(&mut self) -> Result<(), LoadError> {
        for (name, hook) in PROGRAMS {
            let program: &mut Lsm = program_mut(&mut self.ebpf, name)?;
            let attach_error = |e: ProgramError| LoadError::Attach {
                program: name.into(),
                hook: hook.into(),
                error: e.to_string(),
            };
            let id = program.attach().map_err(attach_error)?;
            let link = program.take_link(id).map_err(attach_error)?;
            self.links.push((name, link.into()));
        }
        self.attached = true;
        Ok(())
    }

    /// The sha256 of the embedded BPF object (hex): tells generations of different builds
    /// apart.
    pub fn object_sha256() -> String {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(BPF_OBJECT))
    }

    /// Pins every map (`map_NAME`), program (`prog_NAME`) and link (`link_NAME`) into
    /// `generation`, an empty directory on a BPF filesystem. Call after `attach` and before
    /// `take_reporting`. From then on the links outlive this process.
    pub fn pin(&mut self, generation: &std::path::Path) -> Result<(), LoadError> {
        let pin_error = |what: &str, e: aya::pin::PinError| {
            let mut error = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                error = format!("{error}: {s}");
                source = s.source();
            }
            LoadError::Pin {
                what: what.to_owned(),
                error,
            }
        };
        for (name, map) in self.ebpf.maps() {
            // bpffs refuses names with a dot (`.rodata`, `.bss`).
            let what = format!("map_{}", name.trim_start_matches('.').replace('.', "_"));
            map.pin(generation.join(&what))
                .map_err(|e| pin_error(&what, e))?;
        }
        for (name, program) in self.ebpf.programs_mut() {
            let what = format!("prog_{name}");
            program
                .pin(generation.join(&what))
                .map_err(|e| pin_error(&what, e))?;
        }
        for (name, link) in std::mem::take(&mut self.links) {
            let what = format!("link_{name}");
            let pinned = link
                .pin(generation.join(&what))
                .map_err(|e| pin_error(&what, e))?;
            self.pinned.push(pinned);
        }
        Ok(())
    }

    pub fn attached(&self) -> bool {
        self.attached
    }

    fn write_profile(&mut self, p: &CompiledProfile) -> Result<(), LoadError> {
        {
            let mut exec: LpmTrie<_, PathKey, ExecRule> = self.map(names::EXEC_RULES)?;
            for (len, key, value) in &p.exec_rules {
                exec.insert(&Key::new(*len, *key), value, 0)
                    .map_err(|e| map_error(names::EXEC_RULES, e))?;
            }
        }
        {
            let mut files: LpmTrie<_, PathKey, FileRule> = self.map(names::FILE_RULES)?;
            for (len, key, value) in &p.file_rules {
                files
                    .insert(&Key::new(*len, *key), value, 0)
                    .map_err(|e| map_error(names::FILE_RULES, e))?;
            }
        }
        {
            let mut net: LpmTrie<_, NetKey, NetRule> = self.map(names::NET_RULES)?;
            for (len, key, value) in &p.net_rules {
                net.insert(&Key::new(*len, *key), value, 0)
                    .map_err(|e| map_error(names::NET_RULES, e))?;
            }
        }
        let mut configs: HashMap<_, u32, ProfileConfig> = self.map(names::PROFILES)?;
        configs
            .insert(&p.id, &p.config, 0)
            .map_err(|e| map_error(names::PROFILES, e))
    }

    /// The decision ring buffer and the aggregation map, for the decision reader (can be
    /// taken once). Also maps the ring buffer's positions read-only, for `ring_used`.
    pub fn take_reporting(&mut self) -> Result<Reporting, LoadError> {
        let ring = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| missing(names::EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(|e| map_error(names::EVENTS, e))?;
        let aggregates = self
            .ebpf
            .take_map(names::AGGREGATES)
            .ok_or_else(|| missing(names::AGGREGATES))?;
        let aggregates =
            HashMap::try_from(aggregates).map_err(|e| map_error(names::AGGREGATES, e))?;
        self.ring_positions = RingPositions::map(ring.as_fd()).ok();
        Ok(Reporting { ring, aggregates })
    }

    /// Prefix entries of `PENDING_CGROUPS`: a new cgroup whose path starts with the prefix
    /// and that sits at the given level is governed by `id` (the node default).
    pub fn pend_prefixes(&mut self, prefixes: &[(String, u32)], id: u32) -> Result<(), LoadError> {
        let mut pending: LpmTrie<_, CgroupPathKey, PendingCgroup> =
            self.map(names::PENDING_CGROUPS)?;
        for (prefix, level) in prefixes {
            let (len, key) = cgroup_path_key(prefix).ok_or_else(|| LoadError::Map {
                map: names::PENDING_CGROUPS,
                error: format!("cgroup path prefix {prefix} is too long"),
            })?;
            // Without the NUL: a prefix.
            let value = PendingCgroup {
                profile_id: id,
                level: *level,
            };
            pending
                .insert(&Key::new(len - 8, key), &value, 0)
                .map_err(|e| map_error(names::PENDING_CGROUPS, e))?;
        }
        Ok(())
    }

    /// Ungoverns those of `cgroups` that point at `id`.
    pub fn release_from(&mut self, cgroups: &[u64], id: u32) -> Result<(), LoadError> {
        let mut governed: HashMap<_, u64, u32> = self.map(names::CGROUP_PROFILES)?;
        let result = cgroups.iter().try_for_each(|cgroup| {
            if governed.get(cgroup, 0).is_ok_and(|v| v == id) {
                remove_cgroup(&mut governed, cgroup)?;
            }
            Ok(())
        });
        self.cgroups_changed(result)
    }

    /// Tells the programs that `CGROUP_PROFILES` changed (also after a change that failed
    /// half-way), so that the governing profiles they remember per cgroup (`RESOLVED_CGROUPS`)
    /// are resolved again; then returns `result`.
    fn cgroups_changed<T>(&mut self, result: Result<T, LoadError>) -> Result<T, LoadError> {
        let mut generation: Array<_, u64> = self.map(names::GOVERNANCE_GENERATION)?;
        let next = generation
            .get(&0, 0)
            .map_err(|e| map_error(names::GOVERNANCE_GENERATION, e))?
            .wrapping_add(1);
        generation
            .set(0, &next, 0)
            .map_err(|e| map_error(names::GOVERNANCE_GENERATION, e))?;
        result
    }

    /// Bytes of decision records the kernel wrote and the reader has not consumed yet.
    pub fn ring_used(&self) -> Option<u64> {
        self.ring_positions.as_ref().map(RingPositions::used)
    }

    /// Sum over CPUs of one per-hook counter (`enforcerd_common::counter`).
    pub fn counter(&self, hook: u8, kind: u32) -> u64 {
        let Some(map) = self.ebpf.map(names::COUNTERS) else {
            return 0;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        counters
            .get(&(u32::from(hook) * counter::KINDS + kind), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or_else(|| missing(name))?;
        T::try_from(map).map_err(|e| map_error(name, e))
    }
}

impl KernelMaps for Enforcer {
    /// Writes one compiled profile's rules and settings under its id. Nothing points at the id
    /// yet, so this changes no decision. On failure, whatever was written is removed again.
    fn insert_profile(&mut self, p: &CompiledProfile) -> Result<(), LoadError> {
        let result = self.write_profile(p);
        if result.is_err() {
            self.remove_profile(p);
        }
        result
    }

    /// Removes a profile's settings and rules (best effort: an entry already gone is fine).
    /// Call only after no cgroup points at the id any more and `synchronize` has returned.
    fn remove_profile(&mut self, p: &CompiledProfile) {
        // Settings first: a straggler that still found the id then denies (missing settings)
        // rather than falling back to a default.
        if let Ok(mut configs) = self.map::<HashMap<_, u32, ProfileConfig>>(names::PROFILES) {
            let _ = configs.remove(&p.id);
        }
        if let Ok(mut exec) = self.map::<LpmTrie<_, PathKey, ExecRule>>(names::EXEC_RULES) {
            for (len, key, _) in &p.exec_rules {
                let _ = exec.remove(&Key::new(*len, *key));
            }
        }
        if let Ok(mut files) = self.map::<LpmTrie<_, PathKey, FileRule>>(names::FILE_RULES) {
            for (len, key, _) in &p.file_rules {
                let _ = files.remove(&Key::new(*len, *key));
            }
        }
        if let Ok(mut net) = self.map::<LpmTrie<_, NetKey, NetRule>>(names::NET_RULES) {
            for (len, key, _) in &p.net_rules {
                let _ = net.remove(&Key::new(*len, *key));
            }
        }
    }

    /// Points each cgroup at a profile id. Each entry is replaced atomically, so a task in
    /// that cgroup sees either the old profile or the new one, never a mix.
    fn govern(&mut self, cgroups: &[(u64, u32)]) -> Result<(), LoadError> {
        let mut governed: HashMap<_, u64, u32> = self.map(names::CGROUP_PROFILES)?;
        let result = cgroups.iter().try_for_each(|(cgroup_id, profile_id)| {
            governed
                .insert(cgroup_id, profile_id, 0)
                .map_err(|e| map_error(names::CGROUP_PROFILES, e))
        });
        self.cgroups_changed(result)
    }

    /// Stops governing these cgroups (an absent entry is fine).
    fn ungovern(&mut self, cgroups: &[u64]) -> Result<(), LoadError> {
        let mut governed: HashMap<_, u64, u32> = self.map(names::CGROUP_PROFILES)?;
        let result = cgroups
            .iter()
            .try_for_each(|cgroup_id| remove_cgroup(&mut governed, cgroup_id));
        self.cgroups_changed(result)
    }

    fn pend(&mut self, paths: &[String], id: u32) -> Result<(), LoadError> {
        let mut pending: LpmTrie<_, CgroupPathKey, PendingCgroup> =
            self.map(names::PENDING_CGROUPS)?;
        for path in paths {
            let (len, key) = cgroup_path_key(path).ok_or_else(|| LoadError::Map {
                map: names::PENDING_CGROUPS,
                error: format!(
                    "cgroup path {path} is longer than {} bytes",
                    CGROUP_PATH_BYTES - 1
                ),
            })?;
            pending
                .insert(
                    &Key::new(len, key),
                    &PendingCgroup {
                        profile_id: id,
                        level: 0,
                    },
                    0,
                )
                .map_err(|e| map_error(names::PENDING_CGROUPS, e))?;
        }
        Ok(())
    }

    fn unpend(&mut self, paths: &[String]) {
        if let Ok(mut pending) =
            self.map::<LpmTrie<_, CgroupPathKey, PendingCgroup>>(names::PENDING_CGROUPS)
        {
            for (len, key) in paths.iter().filter_map(|p| cgroup_path_key(p)) {
                let _ = pending.remove(&Key::new(len, key));
            }
        }
    }

    fn rebind(&mut self, from: u32, to: Option<u32>) -> Result<usize, LoadError> {
        let mut governed: HashMap<_, u64, u32> = self.map(names::CGROUP_PROFILES)?;
        let hits: Vec<u64> = governed
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, id)| *id == from)
            .map(|(cgroup, _)| cgroup)
            .collect();
        let result = hits.iter().try_for_each(|cgroup| match to {
            Some(to) => governed
                .insert(cgroup, &to, 0)
                .map_err(|e| map_error(names::CGROUP_PROFILES, e)),
            None => remove_cgroup(&mut governed, cgroup),
        });
        self.cgroups_changed(result.map(|()| hits.len()))
    }

    /// Waits until every program run that may have read the maps before this call has
    /// finished (an RCU grace period, see `rcu`); after it, an old profile id that no cgroup
    /// points at any more is no longer in use.
    fn synchronize(&self) {
        if let Err(e) = self.barrier.wait() {
            // Not expected (the map exists and the update is valid); fall back to a pause far
            // longer than any program run, and say so.
            tracing::warn!("waiting for an RCU grace period failed ({e}); pausing 100 ms instead");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The `PENDING_CGROUPS` key of a path: its bytes and NUL, prefix covering both.
fn cgroup_path_key(path: &str) -> Option<(u32, CgroupPathKey)> {
    let bytes = path.as_bytes();
    if bytes.len() >= CGROUP_PATH_BYTES {
        return None;
    }
    let mut key = CgroupPathKey {
        path: [0; CGROUP_PATH_BYTES],
    };
    key.path[..bytes.len()].copy_from_slice(bytes);
    Some((8 * (bytes.len() as u32 + 1), key))
}

/// Ungoverns one cgroup; an entry already gone is fine (the cgroup_rmdir program drops the
/// entry of a removed cgroup, and aya reports that delete's ENOENT as a syscall error).
fn remove_cgroup(
    governed: &mut HashMap<&mut MapData, u64, u32>,
    cgroup: &u64,
) -> Result<(), LoadError> {
    match governed.remove(cgroup) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(s))
            if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(map_error(names::CGROUP_PROFILES, e)),
    }
}

/// A program of the object, as its type.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?
        .try_into()
        .map_err(|e: ProgramError| LoadError::Object(e.to_string()))
}

fn missing(map: &'static str) -> LoadError {
    LoadError::Map {
        map,
        error: "missing from the BPF object".into(),
    }
}

fn map_error(map: &'static str, e: aya::maps::MapError) -> LoadError {
    LoadError::Map {
        map,
        error: e.to_string(),
    }
}

fn program_error(name: &str, e: ProgramError) -> LoadError {
    let (error, log) = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The end of the verifier's log says why it refused.
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            (
                io_error.to_string(),
                format!("\nverifier log (end):\n{}", tail.join("\n")),
            )
        }
        other => (other.to_string(), String::new()),
    };
    LoadError::Program {
        program: name.into(),
        error,
        log,
    }
}
