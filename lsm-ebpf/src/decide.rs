//! What every hook shares: finding the governing profile, turning a verdict into a return
//! value (deny, kill, audit), counting, and writing decision records.
use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_send_signal,
};
use enforcerd_common::{
    EVENT_PATH_BYTES, Event, MAX_CGROUP_LEVELS, ProfileConfig, counter, decision, mode,
    on_violation, verdict,
};

use core::ptr::read_volatile;

use crate::{
    maps::{CGROUP_PROFILES, COUNTERS, EVENTS, PROFILES, PathScratch},
    offsets,
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

/// The profile of the nearest governed ancestor of the current task's cgroup (or of the
/// cgroup itself), walking from the root down, so the deepest match wins. Bounded by
/// `MAX_CGROUP_LEVELS`; stops at the task's own level (the helper returns 0 below it).
/// The walk uses the task's cgroup v2 hierarchy, not its namespaces, so `unshare`/`setns`
/// and moving to a child cgroup cannot leave a profile.
/// Returns `None` for ungoverned tasks.
#[inline(always)]
pub fn governing_profile() -> Option<Governed> {
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
    // Profile ids start at 1.
    if found == 0 {
        return None;
    }
    let config = match unsafe { PROFILES.get(&found) } {
        Some(c) => *c,
        None => MISSING_CONFIG,
    };
    Some(Governed {
        profile_id: found,
        config,
    })
}

#[inline(always)]
pub fn count(hook: u8, kind: u32) {
    let index = hook as u32 * counter::KINDS + kind;
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
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
        }
    }
}

/// Turns "the profile says deny" into the hook's return value: in enforce mode `-EPERM`
/// (after `SIGKILL` for `onViolation: kill`), in audit mode 0. Every non-allow outcome is
/// reported; an allow only counted.
#[inline(always)]
pub fn verdict(governed: &Governed, denied: bool, detail: &Detail) -> i32 {
    if !denied {
        count(detail.hook, counter::ALLOWED);
        return 0;
    }
    // Missing settings: treat as enforce + deny (see `Governed::config`).
    if governed.config.mode == mode::AUDIT {
        count(detail.hook, counter::AUDITED);
        report(governed.profile_id, decision::AUDIT, detail);
        return 0;
    }
    if governed.config.on_violation == on_violation::KILL {
        unsafe { bpf_send_signal(SIGKILL) };
        count(detail.hook, counter::KILLED);
        report(governed.profile_id, decision::KILL, detail);
    } else {
        count(detail.hook, counter::DENIED);
        report(governed.profile_id, decision::DENY, detail);
    }
    -EPERM
}

/// Writes one decision record to the ring buffer; when it is full, counts the drop instead
/// (the decision itself never depends on reporting).
#[inline(always)]
fn report(profile_id: u32, decision: u8, detail: &Detail) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(detail.hook, counter::DROPPED);
        return;
    };
    // Fill the record in place: it is larger than the BPF stack.
    let e = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    unsafe {
        (*e).boot_ns = bpf_ktime_get_boot_ns();
        (*e).cgroup_id = bpf_get_current_cgroup_id();
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
        let scratch = detail.scratch;
        if !scratch.is_null() && detail.path_len > 0 {
            let dst = &mut (&mut (*e).path)[..EVENT_PATH_BYTES];
            let copied = bpf_probe_read_kernel_buf((*scratch).path.as_ptr(), dst).is_ok();
            // Another task's run on this CPU may have overwritten the buffer since the
            // decision: then the path is not this operation's; say so rather than report it.
            if !copied || read_volatile(&(*scratch).owner) != pid_tgid {
                (*e).path_len = -EAGAIN;
                (*e).path[0] = 0;
            }
        }
    }
    entry.submit(0);
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
