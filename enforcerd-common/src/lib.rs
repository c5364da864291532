//! The ABI between enforcerd's BPF programs (`lsm-ebpf`) and its daemon (`enforcerd`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, so both sides agree on the bytes. The
//! compile step in the daemon turns profiles into these keys and values; the BPF programs only
//! look them up. Sizes are asserted at compile time below.
#![no_std]

/// Deepest cgroup level the kernel programs examine when looking for a governing profile
/// (level 0 is the root cgroup). Selectors deeper than this are refused by the daemon.
pub const MAX_CGROUP_LEVELS: usize = 32;

/// Bytes of a path that take part in rule matching: an LPM trie key holds at most 256 data
/// bytes, 4 of which are the profile id. Rule paths (plus their terminator) must fit; longer
/// *opened* paths still match subtree rules whose prefix fits.
pub const RULE_PATH_BYTES: usize = 252;

/// Size of the buffer the kernel writes a resolved path into (`PATH_MAX`). A path that does
/// not fit cannot be decided; a governed task is then denied (in enforce mode) and reported.
pub const PATH_BUF_BYTES: usize = 4096;

/// Bytes of the resolved path carried in a decision record.
pub const EVENT_PATH_BYTES: usize = 512;

/// A verdict stored in a rule entry or a profile default.
pub mod verdict {
    /// No rule decides; fall back to the profile default.
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// `ProfileConfig::mode`.
pub mod mode {
    pub const ENFORCE: u8 = 0;
    /// Dry run: report what would have been denied, never block.
    pub const AUDIT: u8 = 1;
}

/// `ProfileConfig::on_violation`.
pub mod on_violation {
    /// Return `-EPERM`.
    pub const DENY: u8 = 0;
    /// `SIGKILL` the offending process, and return `-EPERM`.
    pub const KILL: u8 = 1;
}

/// `Event::hook`.
pub mod hook {
    pub const EXEC: u8 = 1;
    pub const FILE: u8 = 2;
    pub const CONNECT: u8 = 3;
}

/// `Event::decision`.
pub mod decision {
    pub const DENY: u8 = 1;
    pub const KILL: u8 = 2;
    /// Audit mode: would have been denied (or killed), was allowed.
    pub const AUDIT: u8 = 3;
}

/// `Event::reason`: why the programs reached a non-allow decision.
pub mod reason {
    /// A rule of the profile matched.
    pub const RULE: u8 = 1;
    /// No rule matched; the profile's default posture applied.
    pub const DEFAULT: u8 = 2;
    /// The resolved path did not fit `PATH_BUF_BYTES`, or resolving it failed.
    pub const PATH_UNRESOLVED: u8 = 3;
    /// A kernel read the programs depend on failed.
    pub const READ_FAILED: u8 = 4;
    /// The per-CPU path buffer was overwritten by other tasks' decisions on every attempt.
    pub const CONTENDED: u8 = 5;
    /// A hard link would give the file a name that allows what its own name denies.
    pub const LINK: u8 = 6;
    /// A rename would give the file (or directory) a name that allows what its own denies.
    pub const RENAME: u8 = 7;
    /// The file was reached through another mount of the root filesystem (a bind mount), and
    /// its name on the root mount is denied.
    pub const MOUNT_ALIAS: u8 = 8;
}

/// File access bits, from the open mode (`FMODE_READ` / `FMODE_WRITE`).
pub mod access {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
}

/// Transport protocols as they appear in network rule keys (IANA protocol numbers).
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Address families as they appear in network rule keys and events. IPv4-mapped IPv6
/// addresses are keyed and reported as IPv4.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Per-profile settings, value of the `PROFILES` map (key: profile id, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileConfig {
    /// `mode::*`
    pub mode: u8,
    /// `on_violation::*`
    pub on_violation: u8,
    /// `verdict::ALLOW` or `verdict::DENY`, for binaries no exec rule names.
    pub exec_default: u8,
    /// Defaults for file opens no file rule covers, per access kind.
    pub file_read_default: u8,
    pub file_write_default: u8,
    /// Default for connects no network rule covers.
    pub connect_default: u8,
    pub _pad: [u8; 2],
}

/// Data part of an LPM trie key for exec and file rules. The trie matches the longest prefix of
/// `profile_id` followed by `path`:
/// - a subtree rule `/var/www/` is stored with its bytes and no terminator, so it matches every
///   path below `/var/www/` and only those (the trailing `/` ends the component);
/// - an exact rule `/etc/shadow` is stored with a terminating NUL, so it matches that path only.
///
/// `prefix_len` (in the trie key) is `32 + 8 * (bytes stored)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    /// The profile id in big-endian byte order (the trie compares bytes MSB first).
    pub profile_id: [u8; 4],
    pub path: [u8; RULE_PATH_BYTES],
}

/// Value of the exec rule trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRule {
    /// `verdict::ALLOW` or `verdict::DENY`.
    pub verdict: u8,
}

/// Value of the file rule trie: the verdict for each access kind, already resolved by the
/// daemon (an access a rule does not name inherits from the next less specific rule that does,
/// else from the profile default), so the kernel needs exactly one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRule {
    pub read: u8,
    pub write: u8,
    /// 1 on a *directory marker*: the entry `D/` + NUL for a directory `D/` (never `/`) below
    /// which the profile has a file or exec rule. No opened file's path ends in `/`, so only
    /// the link and rename hooks, which look up a directory's name with a trailing `/`, find
    /// it; its `read`/`write` are what that lookup would find without it.
    pub beneath: u8,
}

/// Data part of the LPM trie key for connect rules: profile, protocol, port, family, then the
/// address, so a rule is a prefix of `64 + cidr_bits` bits. Port 0 means "any port"; the
/// kernel looks up the exact port first, then port 0, and the longer CIDR wins (the exact port
/// on a tie).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey {
    pub profile_id: [u8; 4],
    /// `protocol::TCP` or `protocol::UDP`.
    pub protocol: u8,
    /// `family::IPV4` or `family::IPV6`.
    pub family: u8,
    /// Port in big-endian byte order; 0 = any port.
    pub port: [u8; 2],
    /// IPv6 address, or IPv4 address in the first 4 bytes (rest zero).
    pub addr: [u8; 16],
}

/// Data part of the LPM trie key of `PENDING_CGROUPS`: a cgroup path below the cgroup2 root
/// (as the `cgroup_mkdir` tracepoint reports it, e.g. `/system.slice/nginx.service`), with its
/// terminating NUL, so an entry matches exactly that path: `prefix_len` is `8 * (len + 1)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPathKey {
    pub path: [u8; CGROUP_PATH_BYTES],
}

/// Value of `PENDING_CGROUPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCgroup {
    /// 0: a known path that is left ungoverned (it only shadows a shorter prefix entry).
    pub profile_id: u32,
    /// 0 for an exact path (stored with its NUL). Otherwise the entry is a prefix (stored
    /// without a NUL, e.g. `/kubepods/burstable/pod`) that binds only cgroups at this level
    /// (number of path components), so a pod's cgroup matches and its containers' do not.
    pub level: u32,
}

/// Longest cgroup path (with its NUL) that can be bound at creation.
pub const CGROUP_PATH_BYTES: usize = 256;

/// Value of the connect rule trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// `verdict::ALLOW` or `verdict::DENY`.
    pub verdict: u8,
    /// The rule's CIDR prefix length, to pick between the exact-port and any-port matches.
    pub cidr_len: u8,
}

/// A non-allow decision, written by the kernel programs to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// Inode number of the file (exec and file hooks), part of the aggregation key.
    pub inode: u64,
    /// Identical decisions folded into the aggregation entry of this record's key so far
    /// (monotonic, see `AggState`); 0 when the key has no entry.
    pub folded: u64,
    pub profile_id: u32,
    /// Thread group id (the process id users know).
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// `hook::*`
    pub hook: u8,
    /// `decision::*`
    pub decision: u8,
    /// `reason::*`
    pub reason: u8,
    /// `access::*` bits (file hook).
    pub access: u8,
    /// `protocol::*` (connect hook).
    pub protocol: u8,
    /// `family::*` (connect hook).
    pub family: u8,
    /// Destination port, host byte order (connect hook).
    pub port: u16,
    /// Destination address (connect hook): IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    /// Length `bpf_d_path` reported (including the NUL), or a negative errno; 0 when the hook
    /// has no path; `-EAGAIN` when the path could not be captured for the report (the decision
    /// itself was made on the right path). When larger than `EVENT_PATH_BYTES`, `path` holds
    /// the first bytes only.
    pub path_len: i32,
    /// Where the process's executable path starts in `exe` (it ends at `EXE_PATH_BYTES`), or
    /// a negative errno when it could not be read (kernel thread, a path longer than
    /// `EXE_PATH_BYTES`, a failed read).
    pub exe_start: i32,
    /// Device (`s_dev`) of the file's filesystem (exec and file hooks).
    pub dev: u32,
    pub path: [u8; EVENT_PATH_BYTES],
    /// The executable path, built from its last component backwards, occupying
    /// `exe[exe_start..EXE_PATH_BYTES]` (not NUL-terminated). The second half is room the
    /// verifier needs to see every write in bounds.
    pub exe: [u8; 2 * EXE_PATH_BYTES],
}

/// Longest executable path a decision record carries.
pub const EXE_PATH_BYTES: usize = 256;

/// Key of the `AGGREGATES` map: what makes two decisions "identical" for aggregation — the
/// same cgroup, profile, hook, decision, access and target: the same file (device and inode,
/// so every path to one file is one target), or the same address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub cgroup_id: u64,
    pub inode: u64,
    pub profile_id: u32,
    pub hook: u8,
    pub decision: u8,
    pub access: u8,
    pub protocol: u8,
    pub family: u8,
    pub _pad: u8,
    pub port: u16,
    pub dev: u32,
    pub addr: [u8; 16],
}

/// Value of the `AGGREGATES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggState {
    /// `boot_ns` of the last record written for this key: decisions within
    /// `globals::AGG_WINDOW_NS` of it are folded here instead of written.
    pub window_start: u64,
    /// Decisions folded so far (atomic adds; never reset, so readers take differences).
    pub folded: u64,
}

/// Index of the per-hook counters in the `COUNTERS` per-CPU array: `hook * COUNTER_KINDS +
/// kind`.
pub mod counter {
    pub const ALLOWED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const KILLED: u32 = 2;
    pub const AUDITED: u32 = 3;
    /// Decision records lost because the ring buffer was full.
    pub const DROPPED: u32 = 4;
    /// Decisions folded into an aggregation entry instead of writing a record.
    pub const AGGREGATED: u32 = 5;
    pub const KINDS: u32 = 6;
    /// Entries in the array: hooks are 1..=3.
    pub const ENTRIES: u32 = 4 * KINDS;
}

/// Names of the read-only globals the daemon sets from the running kernel's BTF before load.
pub mod globals {
    pub const BPRM_FILE: &str = "OFF_BPRM_FILE";
    pub const FILE_F_PATH: &str = "OFF_FILE_F_PATH";
    pub const FILE_F_FLAGS: &str = "OFF_FILE_F_FLAGS";
    pub const FILE_F_MODE: &str = "OFF_FILE_F_MODE";
    pub const SOCKET_TYPE: &str = "OFF_SOCKET_TYPE";
    pub const TASK_REAL_PARENT: &str = "OFF_TASK_REAL_PARENT";
    pub const TASK_TGID: &str = "OFF_TASK_TGID";
    pub const TASK_MM: &str = "OFF_TASK_MM";
    pub const MM_EXE_FILE: &str = "OFF_MM_EXE_FILE";
    pub const PATH_MNT: &str = "OFF_PATH_MNT";
    pub const PATH_DENTRY: &str = "OFF_PATH_DENTRY";
    pub const DENTRY_D_PARENT: &str = "OFF_DENTRY_D_PARENT";
    pub const DENTRY_D_NAME: &str = "OFF_DENTRY_D_NAME";
    pub const QSTR_LEN: &str = "OFF_QSTR_LEN";
    pub const QSTR_NAME: &str = "OFF_QSTR_NAME";
    pub const VFSMOUNT_MNT_ROOT: &str = "OFF_VFSMOUNT_MNT_ROOT";
    pub const MOUNT_MNT: &str = "OFF_MOUNT_MNT";
    pub const MOUNT_MNT_PARENT: &str = "OFF_MOUNT_MNT_PARENT";
    pub const MOUNT_MNT_MOUNTPOINT: &str = "OFF_MOUNT_MNT_MOUNTPOINT";
    /// Aggregation window in nanoseconds; 0 turns aggregation off.
    pub const AGG_WINDOW_NS: &str = "AGG_WINDOW_NS";
    pub const FILE_F_INODE: &str = "OFF_FILE_F_INODE";
    pub const INODE_I_INO: &str = "OFF_INODE_I_INO";
    pub const INODE_I_SB: &str = "OFF_INODE_I_SB";
    pub const SUPER_BLOCK_S_DEV: &str = "OFF_SUPER_BLOCK_S_DEV";
    pub const CGROUP_KN: &str = "OFF_CGROUP_KN";
    pub const CGROUP_ROOT: &str = "OFF_CGROUP_ROOT";
    pub const CGROUP_LEVEL: &str = "OFF_CGROUP_LEVEL";
    pub const CGROUP_ROOT_HIERARCHY_ID: &str = "OFF_CGROUP_ROOT_HIERARCHY_ID";
    pub const KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
    pub const TASK_FS: &str = "OFF_TASK_FS";
    pub const FS_STRUCT_ROOT: &str = "OFF_FS_STRUCT_ROOT";
    pub const QSTR_HASH_LEN: &str = "OFF_QSTR_HASH_LEN";
    pub const INODE_I_MODE: &str = "OFF_INODE_I_MODE";
    pub const DENTRY_D_INODE: &str = "OFF_DENTRY_D_INODE";
    pub const SUPER_BLOCK_S_ROOT: &str = "OFF_SUPER_BLOCK_S_ROOT";
    pub const VFSMOUNT_MNT_SB: &str = "OFF_VFSMOUNT_MNT_SB";
    pub const MSGHDR_MSG_NAME: &str = "OFF_MSGHDR_MSG_NAME";
    pub const SOCKET_SK: &str = "OFF_SOCKET_SK";
    /// `sock.__sk_common.skc_family`, from the start of `struct sock`.
    pub const SOCK_FAMILY: &str = "OFF_SOCK_FAMILY";
    pub const BPRM_BUF: &str = "OFF_BPRM_BUF";
    pub const MM_SAVED_AUXV: &str = "OFF_MM_SAVED_AUXV";
}

/// Names of the maps, as the BPF object defines them.
pub mod maps {
    pub const CGROUP_PROFILES: &str = "CGROUP_PROFILES";
    pub const PROFILES: &str = "PROFILES";
    pub const EXEC_RULES: &str = "EXEC_RULES";
    pub const FILE_RULES: &str = "FILE_RULES";
    pub const NET_RULES: &str = "NET_RULES";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const AGGREGATES: &str = "AGGREGATES";
    pub const PENDING_CGROUPS: &str = "PENDING_CGROUPS";
    pub const RESOLVED_CGROUPS: &str = "RESOLVED_CGROUPS";
    pub const GOVERNANCE_GENERATION: &str = "GOVERNANCE_GENERATION";
    pub const FILE_VERDICTS: &str = "FILE_VERDICTS";
    pub const PATHS_GENERATION: &str = "PATHS_GENERATION";
}

/// Map capacities. The tries allocate on insert, so a large maximum costs nothing until used.
pub mod capacity {
    pub const CGROUP_PROFILES: u32 = 65_536;
    pub const PROFILES: u32 = 4_096;
    pub const EXEC_RULES: u32 = 65_536;
    pub const FILE_RULES: u32 = 262_144;
    pub const NET_RULES: u32 = 65_536;
    /// Ring buffer bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Aggregation entries (allocated on insert; the daemon deletes idle ones). When full,
    /// new targets are reported without aggregation.
    pub const AGGREGATES: u32 = 16_384;
    pub const PENDING_CGROUPS: u32 = 16_384;
    /// Cgroups whose governing profile the programs remember (least recently used ones are
    /// forgotten, and resolved again when next seen).
    pub const RESOLVED_CGROUPS: u32 = 16_384;
    /// Files whose allowed file-rule lookup the `file_open` program remembers (see
    /// `FILE_VERDICTS`; least recently used ones are forgotten).
    pub const FILE_VERDICTS: u32 = 65_536;
    /// Processes between a governed exec of an ELF without `PT_INTERP` and its first
    /// executable file mapping (see `EXEC_MARKS`); least recently used entries are evicted.
    pub const EXEC_MARKS: u32 = 16_384;
}

const _: () = {
    assert!(core::mem::size_of::<ProfileConfig>() == 8);
    assert!(core::mem::size_of::<PathKey>() == 256);
    assert!(core::mem::size_of::<NetKey>() == 24);
    assert!(core::mem::size_of::<FileRule>() == 3);
    assert!(core::mem::size_of::<NetRule>() == 2);
    assert!(
        core::mem::size_of::<Event>()
            == 4 * 8 + 5 * 4 + 8 + 16 + 16 + 3 * 4 + EVENT_PATH_BYTES + 2 * EXE_PATH_BYTES
    );
    assert!(core::mem::size_of::<Event>().is_multiple_of(8));
    assert!(core::mem::size_of::<AggKey>() == 48);
    assert!(core::mem::size_of::<AggState>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, made of integers and byte arrays, without
    // implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::ProfileConfig {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::ExecRule {}
    unsafe impl aya::Pod for super::FileRule {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::AggKey {}
    unsafe impl aya::Pod for super::AggState {}
    unsafe impl aya::Pod for super::CgroupPathKey {}
    unsafe impl aya::Pod for super::PendingCgroup {}
}
