//! Building a path from a (dentry, mount) pair the way `d_path` does — up the dentries,
//! crossing to the parent mount at each mount root — for the places where `bpf_d_path` cannot
//! serve: the reported executable (no `struct path` at hand for the current task) and the
//! link and rename hooks (the kernel allows the helper only in some hooks, and the new name
//! of a link or rename is not a `struct path` at all). The walk is a `bpf_loop` callback:
//! the verifier checks one step instead of unrolling every path through the loop.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated};
use core::ffi::c_void;
use enforcerd_common::PATH_BUF_BYTES;

use crate::{maps::PathScratch, offsets};

/// Most path components and mount crossings in a name built by `build_name` (deeper names
/// are undecidable, and denied).
const NAME_WALK_STEPS: u32 = 512;

pub const ENAMETOOLONG: i32 = 36;
pub const EFAULT: i32 = 14;

#[inline(always)]
pub unsafe fn read_ptr(at: *const u8) -> Result<*const u8, i32> {
    unsafe { bpf_probe_read_kernel(at as *const *const u8) }.map_err(|_| -EFAULT)
}

/// Where a walk is.
#[repr(C)]
struct PathWalk {
    buf: *mut u8,
    dentry: *const u8,
    vfsmnt: *const u8,
    mnt: *const u8,
    /// Where to stop early: the task's root (dentry and vfsmount), so that a chrooted task's
    /// paths read as `bpf_d_path` gives them to `file_open`; null: the mount tree's root.
    root_dentry: *const u8,
    root_vfsmnt: *const u8,
    /// Where the path built so far starts in `buf`.
    pos: u32,
    /// The walk's outcome once it stopped: `pos`, or a negative errno.
    result: i32,
}

/// Builds the path of `dentry` on `vfsmnt` into `buf[..BYTES]`, from its last component
/// backwards, so that it ends at `BYTES` (with a `/` after it when `trailing_slash`). `buf`
/// must have `2 * BYTES` bytes: the second half is room the verifier needs for a component
/// copied at an offset it cannot bound better. Returns where the path starts, or a negative
/// errno (`-ENAMETOOLONG` when it does not fit or takes more than `steps` components and
/// mount crossings). `root` is the (dentry, vfsmount) to stop at, or nulls.
#[inline(always)]
pub fn walk<const BYTES: usize>(
    buf: *mut u8,
    dentry: *const u8,
    vfsmnt: *const u8,
    root: (*const u8, *const u8),
    trailing_slash: bool,
    steps: u32,
) -> i32 {
    let mut w = PathWalk {
        buf,
        dentry,
        vfsmnt,
        mnt: unsafe { vfsmnt.sub(offsets::mount_mnt()) },
        root_dentry: root.0,
        root_vfsmnt: root.1,
        pos: BYTES as u32,
        result: -ENAMETOOLONG,
    };
    if trailing_slash {
        w.pos -= 1;
        unsafe { *buf.add(BYTES - 1) = b'/' };
    }
    let end = w.pos as i32;
    unsafe {
        generated::bpf_loop(
            steps,
            walk_step::<BYTES> as *mut c_void,
            &raw mut w as *mut c_void,
            0,
        )
    };
    if w.result == end {
        // The root directory itself.
        unsafe { *buf.add(BYTES - 1) = b'/' };
        return BYTES as i32 - 1;
    }
    w.result
}

/// One step of a walk: prepend one path component, or cross one mount. Returns 1 to stop
/// (done or failed, see `PathWalk::result`), 0 to go on.
extern "C" fn walk_step<const BYTES: usize>(_index: u64, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *(ctx as *mut PathWalk) };
    if !w.root_dentry.is_null() && w.dentry == w.root_dentry && w.vfsmnt == w.root_vfsmnt {
        w.result = w.pos as i32;
        return 1;
    }
    let Ok(mnt_root) = (unsafe { read_ptr(w.vfsmnt.add(offsets::vfsmount_mnt_root())) }) else {
        w.result = -EFAULT;
        return 1;
    };
    if w.dentry == mnt_root {
        let Ok(parent_mnt) = (unsafe { read_ptr(w.mnt.add(offsets::mount_mnt_parent())) }) else {
            w.result = -EFAULT;
            return 1;
        };
        if parent_mnt == w.mnt {
            w.result = w.pos as i32;
            return 1;
        }
        let Ok(mountpoint) = (unsafe { read_ptr(w.mnt.add(offsets::mount_mnt_mountpoint())) })
        else {
            w.result = -EFAULT;
            return 1;
        };
        w.dentry = mountpoint;
        w.mnt = parent_mnt;
        w.vfsmnt = unsafe { parent_mnt.add(offsets::mount_mnt()) };
        return 0;
    }
    let name = unsafe { w.dentry.add(offsets::dentry_d_name()) };
    let (Ok(parent), Ok(len), Ok(chars)) = (unsafe {
        (
            read_ptr(w.dentry.add(offsets::dentry_d_parent())),
            bpf_probe_read_kernel(name.add(offsets::qstr_len()) as *const u32),
            read_ptr(name.add(offsets::qstr_name())),
        )
    }) else {
        w.result = -EFAULT;
        return 1;
    };
    if len == 0 || len >= w.pos {
        w.result = -ENAMETOOLONG;
        return 1;
    }
    w.pos -= len + 1;
    let at = (w.pos as usize) & (BYTES - 1);
    let failed = unsafe {
        *w.buf.add(at) = b'/';
        generated::bpf_probe_read_kernel(
            w.buf.add(at + 1) as *mut c_void,
            len & (BYTES as u32 - 1),
            chars as *const c_void,
        )
    } != 0;
    if failed {
        w.result = -EFAULT;
        return 1;
    }
    if parent == w.dentry {
        // The root of a tree that is not mounted (a lazily unmounted filesystem).
        w.result = w.pos as i32;
        return 1;
    }
    w.dentry = parent;
    0
}

/// Builds the name of `dentry` on `vfsmnt` up to `root` (see `walk`) into `scratch.path`,
/// NUL-terminated, by way of `buf` (a `WalkBuffer`'s bytes). Returns its length with the NUL
/// (as `bpf_d_path` does), or a negative errno.
#[inline(always)]
pub fn build_name(
    scratch: *mut PathScratch,
    buf: *mut u8,
    dentry: *const u8,
    vfsmnt: *const u8,
    root: (*const u8, *const u8),
    trailing_slash: bool,
) -> i32 {
    let start = walk::<PATH_BUF_BYTES>(buf, dentry, vfsmnt, root, trailing_slash, NAME_WALK_STEPS);
    if start < 0 {
        return start;
    }
    if start == 0 {
        // Fills the buffer: no room for the NUL.
        return -ENAMETOOLONG;
    }
    let len = PATH_BUF_BYTES as u32 - start as u32;
    let failed = unsafe {
        generated::bpf_probe_read_kernel(
            (*scratch).path.as_mut_ptr() as *mut c_void,
            len & (PATH_BUF_BYTES as u32 - 1),
            buf.add(start as usize & (PATH_BUF_BYTES - 1)) as *const c_void,
        )
    } != 0;
    if failed {
        return -EFAULT;
    }
    unsafe { (*scratch).path[len as usize & (PATH_BUF_BYTES - 1)] = 0 };
    len as i32 + 1
}

/// `current->fs->root` as (dentry, vfsmount), or nulls (a walk then goes to the mount tree's
/// root).
#[inline(always)]
pub fn task_root() -> (*const u8, *const u8) {
    let none = (core::ptr::null(), core::ptr::null());
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(fs) = (unsafe { read_ptr(task.add(offsets::task_fs())) }) else {
        return none;
    };
    if fs.is_null() {
        return none;
    }
    let root = unsafe { fs.add(offsets::fs_struct_root()) };
    match unsafe {
        (
            read_ptr(root.add(offsets::path_dentry())),
            read_ptr(root.add(offsets::path_mnt())),
        )
    } {
        (Ok(dentry), Ok(mnt)) => (dentry, mnt),
        _ => none,
    }
}
