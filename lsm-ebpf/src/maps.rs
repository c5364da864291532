//! The maps shared with the daemon. Keys and values are the `enforcerd_common` types.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use enforcerd_common::{
    AggKey, AggState, CgroupPathKey, ExecRule, FileRule, NetKey, NetRule, PATH_BUF_BYTES, PathKey,
    PendingCgroup, ProfileConfig, capacity, counter,
};

/// Governed cgroup id -> profile id.
#[map]
pub static CGROUP_PROFILES: HashMap<u64, u32> =
    HashMap::with_max_entries(capacity::CGROUP_PROFILES, 0);

/// Cgroup id -> the profile that governs it (0: none), as `governing_profile` last resolved
/// it by walking the cgroup's ancestors through `CGROUP_PROFILES`, stamped with the
/// `GOVERNANCE_GENERATION` read before that walk. A hook then needs one lookup instead of one
/// per level. Cgroup ids are never reused within a boot, and a new cgroup is bound (by
/// `cgroup_mkdir`) before any task can be in it, so only the daemon's changes can make an
/// entry stale, and those bump the generation.
#[map]
pub static RESOLVED_CGROUPS: LruHashMap<u64, ResolvedCgroup> =
    LruHashMap::with_max_entries(capacity::RESOLVED_CGROUPS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ResolvedCgroup {
    pub generation: u64,
    pub profile_id: u32,
    /// The profile's settings as `PROFILES` held them (a profile id's settings never change;
    /// removing them follows a change of governance, which makes this entry stale).
    pub config: ProfileConfig,
    pub _pad: u32,
}

/// One counter the daemon increments after every change to `CGROUP_PROFILES` (after the
/// change, so a walk that read the old generation may have seen old entries and is
/// discarded, and one that read the new generation sees the change).
#[map]
pub static GOVERNANCE_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Dentry address -> an allowed `file_open` lookup result and what it depended on (see
/// `file_verdicts`).
#[map]
pub static FILE_VERDICTS: LruHashMap<u64, CachedFileVerdict> =
    LruHashMap::with_max_entries(capacity::FILE_VERDICTS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedFileVerdict {
    pub paths_generation: u64,
    pub root_dentry: u64,
    pub mnt: u64,
    pub parent: u64,
    pub hash_len: u64,
    pub inode: u64,
    pub ino: u64,
    pub profile_id: u32,
    /// `FILE_RULES`' answer: read verdict | write verdict << 8; 0 = no rule (the defaults).
    pub found: u16,
    pub _pad: u16,
}

/// Incremented by the programs whenever a path may have changed (see `file_verdicts`).
#[map]
pub static PATHS_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Profile id -> settings.
#[map]
pub static PROFILES: HashMap<u32, ProfileConfig> = HashMap::with_max_entries(capacity::PROFILES, 0);

#[map]
pub static EXEC_RULES: LpmTrie<PathKey, ExecRule> =
    LpmTrie::with_max_entries(capacity::EXEC_RULES, 0);

#[map]
pub static FILE_RULES: LpmTrie<PathKey, FileRule> =
    LpmTrie::with_max_entries(capacity::FILE_RULES, 0);

#[map]
pub static NET_RULES: LpmTrie<NetKey, NetRule> = LpmTrie::with_max_entries(capacity::NET_RULES, 0);

/// Decision records (`enforcerd_common::Event`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Per-hook decision counters, see `enforcerd_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::ENTRIES, 0);

/// Aggregation of identical decisions (see `AggKey`). Not preallocated: entries are freed
/// after an RCU grace period, so a program run still holding one of them never writes into an
/// entry recycled for another key; the daemon deletes idle entries.
#[map]
pub static AGGREGATES: HashMap<AggKey, AggState> =
    HashMap::with_max_entries(capacity::AGGREGATES, BPF_F_NO_PREALLOC);
const BPF_F_NO_PREALLOC: u32 = 1;

/// Process (tgid) -> the `mm_struct` of the image a governed exec gave it, for execs of an ELF
/// without `PT_INTERP` whose first executable file mapping is decided as an exec (see
/// `programs::mmap_file`). `EXEC_MARK_PENDING` until the exec passed its point of no return.
#[map]
pub static EXEC_MARKS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(capacity::EXEC_MARKS, 0);
pub const EXEC_MARK_PENDING: u64 = 0;

/// Cgroup paths expected to appear (a systemd unit's, a pod's) -> the profile id to govern
/// them with from the instant they are created (see `cgroups::cgroup_mkdir`).
#[map]
pub static PENDING_CGROUPS: LpmTrie<CgroupPathKey, PendingCgroup> =
    LpmTrie::with_max_entries(capacity::PENDING_CGROUPS, 0);

/// Per-CPU scratch space for the `cgroup_mkdir` path (as a `PENDING_CGROUPS` key).
#[map]
pub static CGROUP_PATH_SCRATCH: PerCpuArray<aya_ebpf::maps::lpm_trie::Key<CgroupPathKey>> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space. Its first bytes are laid out as an LPM trie key for the path tries
/// (`prefix_len`, then `PathKey`), so `bpf_d_path` writes the resolved path straight into the
/// key and one lookup needs no copy. Bytes after the path's NUL are stale; that is harmless
/// because no rule entry extends past a NUL (see `PathKey`).
///
/// LSM programs can be preempted (they only keep their CPU), so another task's program run on
/// the same CPU can overwrite this buffer mid-decision. `owner` (the task's pid_tgid, written
/// before the path) detects that: a run that finds another owner after its lookup retries.
#[repr(C)]
pub struct PathScratch {
    pub prefix_len: u32,
    pub profile_id: [u8; 4],
    pub path: [u8; PATH_BUF_BYTES],
    pub owner: u64,
}

#[map]
pub static SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for a path built backwards by `path_walk` (link and rename hooks), before it
/// is copied into `SCRATCH` as a trie key. Twice the path size: see `path_walk::walk`. Its
/// users write `SCRATCH.owner` before they walk, so that owner check covers this buffer too.
#[repr(C)]
pub struct WalkBuffer {
    pub bytes: [u8; 2 * PATH_BUF_BYTES],
    /// What the new name and the current name of a link or rename allow (see `aliases`).
    pub allows: [u8; 2],
}

/// A denial's record fields on their way to the report (see `decide::verdict`).
#[repr(C)]
pub struct RecordFields {
    pub owner: u64,
    pub path_len: i32,
    pub hook: u8,
    pub reason: u8,
    pub access: u8,
    pub protocol: u8,
    pub family: u8,
}

#[map]
pub static RECORD_FIELDS: PerCpuArray<RecordFields> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static WALK_BUFFER: PerCpuArray<WalkBuffer> = PerCpuArray::with_max_entries(1, 0);

/// Marks a build: its size is `ENFORCERD_BPF_BUILD` (a number) when set at build time, else 1.
/// No program uses it. The VM suite builds a second binary with another value, so that the
/// upgrade scenario hands over between two genuinely different BPF objects.
#[map]
pub static BUILD_MARK: PerCpuArray<u8> = PerCpuArray::with_max_entries(build_mark(), 0);

const fn build_mark() -> u32 {
    let Some(digits) = option_env!("ENFORCERD_BPF_BUILD") else {
        return 1;
    };
    let digits = digits.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < digits.len() {
        value = value * 10 + (digits[i] - b'0') as u32;
        i += 1;
    }
    if value == 0 { 1 } else { value }
}
