//! Binding cgroups to profiles the instant they are created. A systemd unit's cgroup is
//! created an instant before its main process is moved in and execs; a pod's cgroup before
//! its containers'. The daemon lists the paths it expects in `PENDING_CGROUPS`; this program,
//! on the `cgroup_mkdir` tracepoint, looks the new cgroup's path up there and governs its id
//! in `CGROUP_PROFILES`. The tracepoint fires inside mkdir(2), before the directory is
//! activated, so no task can have entered the cgroup yet. `cgroup_rmdir` drops the entry of a
//! removed cgroup, so restarts do not fill the map. Prefix entries (the node default for pod
//! cgroups of pods the daemon does not know yet) bind only cgroups at their level.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_probe_read_kernel, generated::bpf_probe_read_kernel_str},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use enforcerd_common::CGROUP_PATH_BYTES;

use crate::{
    maps::{CGROUP_PATH_SCRATCH, CGROUP_PROFILES, PENDING_CGROUPS},
    offsets,
};

/// `TP_PROTO(struct cgroup *cgrp, const char *path)`.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let Some(id) = unified_cgroup_id(cgrp) else {
        return 0;
    };
    let Some(key) = CGROUP_PATH_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let len = unsafe {
        bpf_probe_read_kernel_str(
            (*key).data.path.as_mut_ptr() as *mut c_void,
            CGROUP_PATH_BYTES as u32,
            path as *const c_void,
        )
    };
    // `len` counts the NUL; stale bytes after it are outside the prefix.
    if len <= 1 {
        return 0;
    }
    unsafe { (*key).prefix_len = 8 * len as u32 };
    let Some(pending) = PENDING_CGROUPS.get(unsafe { &*key }) else {
        return 0;
    };
    // Profile id 0: a path the daemon knows and leaves alone (a pod no profile selects). It
    // only shadows a node-default prefix; it must not be bound, or it would hide the profile
    // of a governed ancestor.
    if pending.profile_id == 0 {
        return 0;
    }
    if pending.level != 0 {
        // A prefix entry: only cgroups at its level (a pod's, not its containers').
        let level: i32 =
            unsafe { bpf_probe_read_kernel(cgrp.add(offsets::cgroup_level()) as *const i32) }
                .unwrap_or(-1);
        if level != pending.level as i32 {
            return 0;
        }
    }
    let _ = CGROUP_PROFILES.insert(&id, &pending.profile_id, 0);
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    if let Some(id) = unified_cgroup_id(cgrp) {
        let _ = CGROUP_PROFILES.remove(&id);
    }
    0
}

/// `cgrp->kn->id` for a cgroup of the unified (v2) hierarchy, whose root has hierarchy id 0;
/// `None` for cgroup v1 hierarchies and failed reads.
#[inline(always)]
fn unified_cgroup_id(cgrp: *const u8) -> Option<u64> {
    unsafe {
        let root: *const u8 = bpf_probe_read_kernel(cgrp.add(offsets::cgroup_root()) as _).ok()?;
        let hierarchy: i32 =
            bpf_probe_read_kernel(root.add(offsets::cgroup_root_hierarchy_id()) as _).ok()?;
        if hierarchy != 0 {
            return None;
        }
        let kn: *const u8 = bpf_probe_read_kernel(cgrp.add(offsets::cgroup_kn()) as _).ok()?;
        bpf_probe_read_kernel(kn.add(offsets::kernfs_node_id()) as *const u64).ok()
    }
}
