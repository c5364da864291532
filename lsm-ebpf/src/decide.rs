//! What every hook shares: finding the governing profile, turning a verdict into a return
//! value (deny, kill, audit), counting, and writing decision records.
use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_send_signal,
};
use enforcerd_common::{
    AggKey, AggState, EVENT_PATH_BYTES, EXE_PATH_BYTES, Event, MAX_CGROUP_LEVELS, ProfileConfig,
    counter, decision, mode, on_violation, reason, verdict,
};

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use crate::{
    maps::{
        AGGREGATES, CGROUP_PROFILES, COUNTERS, EVENTS, GOVERNANCE_GENERATION, PROFILES,
        PathScratch, RECORD_FIELDS, RESOLVED_CGROUPS, ResolvedCgroup,
    },
    offsets,
    path_walk::{EFAULT, read_ptr, walk},
};

pub const EPERM: i32 = 1;
const EAGAIN: i32 = 11;
const SIGKILL: u32 = 9;

/// The profile that governs the current task.
pub struct Governed {
    pub profile_id: u32,
    /// The profile's settings, or `MISSING_CONFIG` if the daemon mapped a cgroup to a profile
    /// whose settings are absent (its apply order prevents that).
    pub config: ProfileConfig,
}

/// Used when a governed cgroup's profile has no settings: enforce, deny everything. (A plain
/// value rather than an `Option`: the verifier rejects the undefined payload LLVM may spill.)
pub const MISSING_CONFIG: ProfileConfig = ProfileConfig {
    mode: mode::ENFORCE,
    on_violation: on_violation::DENY,
    exec_default: verdict::DENY,
    file_read_default: verdict::DENY,
    file_write_default: verdict::DENY,
    connect_default: verdict::DENY,
    _pad: [0; 2],
};

/// The profile that governs the current task: the one of the nearest governed ancestor of
/// its cgroup (or of the cgroup itself). Remembered per cgroup in `RESOLVED_CGROUPS` until the
/// daemon changes which cgroups are governed; see [`walk_cgroup_ancestors`] for the walk.
/// Returns `None` for ungoverned tasks.
#[inline(always)]
pub fn governing_profile() -> Option<Governed> {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // Read before the walk (see GOVERNANCE_GENERATION).
    let generation = match GOVERNANCE_GENERATION.get_ptr(0) {
        Some(g) => unsafe { read_volatile(g) },
        None => return walk_and_find(),
    };
    if let Some(r) = unsafe { RESOLVED_CGROUPS.get(&cgroup) }
        && r.generation == generation
    {
        return governed(r.profile_id, r.config);
    }
    let found = walk_cgroup_ancestors();
    let config = settings(found);
    let entry = ResolvedCgroup {
        generation,
        profile_id: found,
        config,
        _pad: 0,
    };
    let _ = RESOLVED_CGROUPS.insert(&cgroup, &entry, 0);
    governed(found, config)
}

/// `found`'s settings, `MISSING_CONFIG` if absent (also for 0, which governs nothing).
#[inline(always)]
fn settings(found: u32) -> ProfileConfig {
    if found == 0 {
        return MISSING_CONFIG;
    }
    match unsafe { PROFILES.get(&found) } {
        Some(c) => *c,
        None => MISSING_CONFIG,
    }
}

/// The governed view of profile `found` (`None` for 0: ungoverned).
#[inline(always)]
fn governed(found: u32, config: ProfileConfig) -> Option<Governed> {
    // Profile ids start at 1.
    if found == 0 {
        return None;
    }
    Some(Governed {
        profile_id: found,
        config,
    })
}

/// [`governing_profile`] without the memory (only if the generation map cannot be read).
#[inline(always)]
fn walk_and_find() -> Option<Governed> {
    let found = walk_cgroup_ancestors();
    governed(found, settings(found))
}

/// The profile id of the nearest governed ancestor of the current task's cgroup (or of the
/// cgroup itself), walking from the root down, so the deepest match wins; 0 for none.
/// Bounded by `MAX_CGROUP_LEVELS`; stops at the task's own level (the helper returns 0 below
/// it). The walk uses the task's cgroup v2 hierarchy, not its namespaces, so
/// `unshare`/`setns` and moving to a child cgroup cannot leave a profile.
#[inline(always)]
fn walk_cgroup_ancestors() -> u32 {
    let mut found: u32 = 0;
    let mut level: i32 = 0;
    while level < MAX_CGROUP_LEVELS as i32 {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if let Some(profile_id) = unsafe { CGROUP_PROFILES.get(&id) } {
            found = *profile_id;
        }
        level += 1;
    }
    found
}

/// Adds one to a per-hook counter. Atomic: LSM programs can be preempted, so two runs on one
/// CPU can interleave, and the counters must be exact.
#[inline(always)]
pub fn count(hook: u8, kind: u32) {
    let index = hook as u32 * counter::KINDS + kind;
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { atomic_add(c, 1) };
    }
}

/// What a hook found out about the operation, for the decision record.
pub struct Detail {
    pub hook: u8,
    pub reason: u8,
    pub access: u8,
    pub protocol: u8,
    pub family: u8,
    pub port: u16,
    pub addr: [u8; 16],
    /// The scratch buffer holding the resolved path, or null when the hook has none.
    pub scratch: *mut PathScratch,
    /// What `bpf_d_path` returned: length including the NUL, or a negative errno.
    pub path_len: i32,
    /// The `struct file` decided on (exec and file hooks), or null: its inode identifies the
    /// target for aggregation.
    pub file: *const u8,
    /// The dentry decided on where there is no file (link and rename), or null: likewise.
    pub dentry: *const u8,
}

impl Detail {
    #[inline(always)]
    pub const fn new(hook: u8) -> Self {
        Detail {
            hook,
            reason: 0,
            access: 0,
            protocol: 0,
            family: 0,
            port: 0,
            addr: [0; 16],
            scratch: core::ptr::null_mut(),
            path_len: 0,
            file: core::ptr::null(),
            dentry: core::ptr::null(),
        }
    }
}

/// Turns "the profile says deny" into the hook's return value: in enforce mode `-EPERM`
/// (after `SIGKILL` for `onViolation: kill`), in audit mode 0. Every non-allow outcome is
/// reported; an allow only counted.
///
/// Before reporting, the record fields that differ between the many ways a hook reaches a
/// denial (hook, reason, access, protocol, family, path length) pass through map memory,
/// which the verifier reads back as unknown values. Kept as constants, every combination made
/// it verify the reporting code again: on 6.1 the programs took 1,050,000 instructions to
/// verify instead of about 400,000 (`path_rename` alone 983,000), about 5 s of start-up under
/// emulation. Another task's run on this CPU between the write and the read could leave its
/// fields there: the owner stamp detects that, and the record then says `contended`. The
/// decision itself never passes through memory.
#[inline(always)]
pub fn verdict(governed: &Governed, denied: bool, detail: &mut Detail) -> i32 {
    if !denied {
        count(detail.hook, counter::ALLOWED);
        return 0;
    }
    // A one-entry array at index 0: cannot fail. Were it to, the denial stands, unreported
    // (reporting it from here would bring back every combination of constants).
    let Some(f) = RECORD_FIELDS.get_ptr_mut(0) else {
        return -EPERM;
    };
    let me = bpf_get_current_pid_tgid();
    unsafe {
        write_volatile(&raw mut (*f).owner, me);
        write_volatile(&raw mut (*f).path_len, detail.path_len);
        write_volatile(&raw mut (*f).hook, detail.hook);
        write_volatile(&raw mut (*f).reason, detail.reason);
        write_volatile(&raw mut (*f).access, detail.access);
        write_volatile(&raw mut (*f).protocol, detail.protocol);
        write_volatile(&raw mut (*f).family, detail.family);
        detail.path_len = read_volatile(&raw const (*f).path_len);
        detail.hook = read_volatile(&raw const (*f).hook);
        detail.reason = read_volatile(&raw const (*f).reason);
        detail.access = read_volatile(&raw const (*f).access);
        detail.protocol = read_volatile(&raw const (*f).protocol);
        detail.family = read_volatile(&raw const (*f).family);
        if read_volatile(&raw const (*f).owner) != me {
            detail.reason = reason::CONTENDED;
        }
    }
    // Missing settings: treat as enforce + deny (see `Governed::config`).
    let (kind, decision, ret) = if governed.config.mode == mode::AUDIT {
        (counter::AUDITED, decision::AUDIT, 0)
    } else if governed.config.on_violation == on_violation::KILL {
        unsafe { bpf_send_signal(SIGKILL) };
        (counter::KILLED, decision::KILL, -EPERM)
    } else {
        (counter::DENIED, decision::DENY, -EPERM)
    };
    count(detail.hook, kind);
    report(governed.profile_id, decision, detail);
    ret
}

/// Reports one non-allow decision: folds it into its aggregation entry when an identical
/// decision was recorded less than `AGG_WINDOW_NS` ago, else writes a record to the ring
/// buffer. When the ring buffer is full it folds too if the key has an entry, and otherwise
/// counts the drop. Exactly one of reported / aggregated / dropped happens per decision, and
/// the decision itself never depends on reporting.
#[inline(always)]
fn report(profile_id: u32, decision: u8, detail: &Detail) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (inode, dev) = target_identity(detail);
    let key = AggKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        inode,
        profile_id,
        hook: detail.hook,
        decision,
        access: detail.access,
        protocol: detail.protocol,
        family: detail.family,
        _pad: 0,
        port: detail.port,
        dev,
        addr: detail.addr,
    };
    let scratch = detail.scratch;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let window = offsets::agg_window_ns();
    let state = if window != 0 {
        AGGREGATES.get_ptr_mut(&key)
    } else {
        None
    };
    if let Some(s) = state
        && now.wrapping_sub(unsafe { read_volatile(&(*s).window_start) }) < window
    {
        fold(s, detail.hook);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        match state {
            Some(s) => fold(s, detail.hook),
            None => count(detail.hook, counter::DROPPED),
        }
        return;
    };
    // Fill the record in place: it is larger than the BPF stack.
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).boot_ns = now;
        (*e).cgroup_id = key.cgroup_id;
        (*e).inode = key.inode;
        (*e).dev = key.dev;
        (*e).folded = match state {
            Some(s) => read_volatile(&(*s).folded),
            None => 0,
        };
        (*e).profile_id = profile_id;
        (*e).pid = (pid_tgid >> 32) as u32;
        (*e).tid = pid_tgid as u32;
        (*e).ppid = parent_tgid();
        (*e).uid = bpf_get_current_uid_gid() as u32;
        (*e).hook = detail.hook;
        (*e).decision = decision;
        (*e).reason = detail.reason;
        (*e).access = detail.access;
        (*e).protocol = detail.protocol;
        (*e).family = detail.family;
        (*e).port = detail.port;
        (*e).addr = detail.addr;
        (*e).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*e).path_len = detail.path_len;
        (*e).path[0] = 0;
        if !scratch.is_null() && detail.path_len > 0 {
            let dst = &mut (&mut (*e).path)[..EVENT_PATH_BYTES];
            // Another task's run on this CPU may have overwritten the buffer since the
            // decision: then the path is not this operation's; say so rather than report it.
            if bpf_probe_read_kernel_buf((*scratch).path.as_ptr(), dst).is_err()
                || read_volatile(&(*scratch).owner) != pid_tgid
            {
                (*e).path_len = -EAGAIN;
                (*e).path[0] = 0;
            }
        }
        (*e).exe_start = exe_path((*e).exe.as_mut_ptr());
    }
    entry.submit(0);
    if window != 0 {
        match state {
            Some(s) => unsafe { write_volatile(&mut (*s).window_start, now) },
            None => {
                // Another CPU may have inserted it meanwhile, or the map is full: then this
                // key is simply not aggregated this time.
                let _ = AGGREGATES.insert(
                    &key,
                    &AggState {
                        window_start: now,
                        folded: 0,
                    },
                    BPF_NOEXIST,
                );
            }
        }
    }
}

const BPF_NOEXIST: u64 = 1;

/// `*p += v` as one BPF atomic add (the BPF target's core has no atomic types with
/// read-modify-write methods; the result is unused, so this needs no BPF v3 instructions).
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
fn fold(state: *mut AggState, hook: u8) {
    unsafe { atomic_add(&raw mut (*state).folded, 1) };
    count(hook, counter::AGGREGATED);
}

/// (inode number, device) of the decided file (`detail.file`'s inode, else `detail.dentry`'s),
/// or zeros when there is none or a read fails.
#[inline(always)]
fn target_identity(detail: &Detail) -> (u64, u32) {
    let read = || -> Result<(u64, u32), i32> {
        let inode = if !detail.file.is_null() {
            unsafe { read_ptr(detail.file.add(offsets::file_f_inode()))? }
        } else if !detail.dentry.is_null() {
            unsafe { read_ptr(detail.dentry.add(offsets::dentry_d_inode()))? }
        } else {
            return Ok((0, 0));
        };
        let ino: u64 =
            unsafe { bpf_probe_read_kernel(inode.add(offsets::inode_i_ino()) as *const u64) }
                .map_err(|_| -EFAULT)?;
        let sb = unsafe { read_ptr(inode.add(offsets::inode_i_sb()))? };
        let dev: u32 =
            unsafe { bpf_probe_read_kernel(sb.add(offsets::super_block_s_dev()) as *const u32) }
                .map_err(|_| -EFAULT)?;
        Ok((ino, dev))
    };
    read().unwrap_or((0, 0))
}

/// Most path components (and mount crossings) walked for the executable path.
const EXE_WALK_STEPS: u32 = 64;
const ENOENT: i32 = 2;

/// Builds `current->mm->exe_file`'s path into `exe` (see `path_walk`), up to the root of the
/// task's mount tree. Returns where the path starts in `exe`, or a negative errno. Only runs
/// for reported decisions, never on the allow path.
#[inline(always)]
fn exe_path(exe: *mut u8) -> i32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(mm) = (unsafe { read_ptr(task.add(offsets::task_mm())) }) else {
        return -EFAULT;
    };
    if mm.is_null() {
        return -ENOENT;
    }
    let Ok(file) = (unsafe { read_ptr(mm.add(offsets::mm_exe_file())) }) else {
        return -EFAULT;
    };
    if file.is_null() {
        return -ENOENT;
    }
    let f_path = unsafe { file.add(offsets::file_f_path()) };
    let (Ok(dentry), Ok(vfsmnt)) = (unsafe {
        (
            read_ptr(f_path.add(offsets::path_dentry())),
            read_ptr(f_path.add(offsets::path_mnt())),
        )
    }) else {
        return -EFAULT;
    };
    let none = core::ptr::null();
    walk::<EXE_PATH_BYTES>(exe, dentry, vfsmnt, (none, none), false, EXE_WALK_STEPS)
}

/// `current->real_parent->tgid`, or 0 if a read fails.
#[inline(always)]
fn parent_tgid() -> u32 {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let parent: *const u8 = match bpf_probe_read_kernel(
            task.add(offsets::task_real_parent()) as *const *const u8
        ) {
            Ok(p) => p,
            Err(_) => return 0,
        };
        bpf_probe_read_kernel(parent.add(offsets::task_tgid()) as *const u32).unwrap_or(0)
    }
}
