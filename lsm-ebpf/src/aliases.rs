//! Hard links and renames made by governed tasks. Rules match paths, so giving an existing
//! file a second name (`link`) or another name (`rename`) could reach it under a name that
//! allows more than its own: a workload that links `/etc/shadow` into a directory it may read,
//! or moves a binary it may not run into a directory it may. The rule here, like AppArmor's
//! for links: the new name may not allow any access (read, write, exec) that the file's
//! current name denies. A directory is decided by its names with a trailing `/` (what its
//! contents inherit), and may not be moved when the profile has rules below its old or new
//! name (directory markers, see `FileRule::beneath`). Reported as hook "file" (with the
//! accesses the new name would add, none for a directory with rules below) or "exec" (when
//! only exec would be added), reason "link" or "rename", target the current name.
//!
//! `bpf_d_path` is not available in these hooks and the new name is not a `struct path`, so
//! both names are built by `path_walk` from their dentry and mount (a hard link never crosses
//! a mount: the kernel refuses it with EXDEV before this hook).
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel, generated},
    macros::lsm,
    programs::LsmContext,
};
use core::ptr::{read_volatile, write_volatile};
use enforcerd_common::{PATH_BUF_BYTES, access, hook, reason, verdict as v};

use crate::{
    decide::{Detail, Governed, governing_profile, verdict},
    maps::{EXEC_RULES, FILE_RULES, PathScratch, SCRATCH, WALK_BUFFER},
    offsets,
    path_walk::{ENAMETOOLONG, read_ptr, walk},
    programs::{PATH_ATTEMPTS, PATH_KEY_BITS, as_path_key, file_denied},
};

/// Most path components and mount crossings in a name (deeper names are undecidable, and
/// denied).
const WALK_STEPS: u32 = 512;
/// `S_IFMT` and `S_IFDIR` in `inode->i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const RENAME_EXCHANGE: u32 = 2;
/// What a name allows, as bits: `access::READ`, `access::WRITE` and this.
const EXEC: u8 = 4;
/// Not an access: the name is a directory with rules of the profile below it (a directory
/// marker, see `FileRule::beneath`).
const RULES_BELOW: u8 = 8;

/// `link(old, new)`: `new_dir` is a `struct path` on the mount both names are on.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(governed) = governing_profile() else {
        return 0;
    };
    let old_dentry: *const u8 = ctx.arg(0);
    let new_dir: *const u8 = ctx.arg(1);
    let new_dentry: *const u8 = ctx.arg(2);
    let mut detail = Detail::new(hook::FILE);
    detail.reason = reason::LINK;
    detail.dentry = old_dentry;
    let denied = match unsafe { read_ptr(new_dir.add(offsets::path_mnt())) } {
        Ok(mnt) => new_name_denied(&governed, (old_dentry, mnt), (new_dentry, mnt), &mut detail),
        Err(_) => {
            detail.reason = reason::READ_FAILED;
            true
        }
    };
    verdict(&governed, denied, &detail)
}

/// `rename(old, new)`, and with `RENAME_EXCHANGE` the other way round too.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let Some(governed) = governing_profile() else {
        return 0;
    };
    let old_dir: *const u8 = ctx.arg(0);
    let old_dentry: *const u8 = ctx.arg(1);
    let new_dir: *const u8 = ctx.arg(2);
    let new_dentry: *const u8 = ctx.arg(3);
    let flags: u32 = ctx.arg(4);
    let mut detail = Detail::new(hook::FILE);
    detail.reason = reason::RENAME;
    detail.dentry = old_dentry;
    let denied = match unsafe {
        (
            read_ptr(old_dir.add(offsets::path_mnt())),
            read_ptr(new_dir.add(offsets::path_mnt())),
        )
    } {
        (Ok(old_mnt), Ok(new_mnt)) => {
            let old = (old_dentry, old_mnt);
            let new = (new_dentry, new_mnt);
            new_name_denied(&governed, old, new, &mut detail)
                || (flags & RENAME_EXCHANGE != 0 && {
                    detail.dentry = new_dentry;
                    new_name_denied(&governed, new, old, &mut detail)
                })
        }
        _ => {
            detail.reason = reason::READ_FAILED;
            true
        }
    };
    verdict(&governed, denied, &detail)
}

/// Whether `current` (a dentry and the vfsmount it is seen through) may not also or instead
/// be called `new`: true when `new` allows an access `current` denies, when either name is a
/// directory with rules below it, or when a name cannot be built (undecidable; `detail` says
/// why). Names are built relative to the task's root, as
/// `file_open` sees them. On a denial `detail` holds the current name and what `new` adds.
#[inline(always)]
fn new_name_denied(
    governed: &Governed,
    current: (*const u8, *const u8),
    new: (*const u8, *const u8),
    detail: &mut Detail,
) -> bool {
    let (Some(scratch), Some(walk_buffer)) = (SCRATCH.get_ptr_mut(0), WALK_BUFFER.get_ptr_mut(0))
    else {
        detail.reason = reason::READ_FAILED;
        return true;
    };
    let buf = unsafe { (*walk_buffer).bytes.as_mut_ptr() };
    detail.scratch = scratch;
    // A directory's names are decided with a trailing "/", so that subtree rules naming the
    // directory itself apply to it.
    let directory = is_directory(current.0);
    let root = task_root();
    let me = bpf_get_current_pid_tgid();
    let mut attempt = 0;
    while attempt < PATH_ATTEMPTS {
        attempt += 1;
        unsafe { write_volatile(&mut (*scratch).owner, me) };
        // The current name last: it stays in the scratch buffer for the report.
        let Some(new_allows) = name_allows(governed, scratch, buf, new, root, directory, detail)
        else {
            return true;
        };
        let Some(current_allows) =
            name_allows(governed, scratch, buf, current, root, directory, detail)
        else {
            return true;
        };
        if unsafe { read_volatile(&(*scratch).owner) } != me {
            continue;
        }
        if (new_allows | current_allows) & RULES_BELOW != 0 {
            // Moving a directory with rules below either name would move those rules' paths
            // onto other files, or other files onto them.
            return true;
        }
        let gained = new_allows & !current_allows;
        if gained & (access::READ | access::WRITE) != 0 {
            detail.access = gained & (access::READ | access::WRITE);
        } else if gained != 0 {
            detail.hook = hook::EXEC;
        }
        return gained != 0;
    }
    detail.reason = reason::CONTENDED;
    true
}

/// The accesses (`access::READ`, `access::WRITE`, `EXEC`) the governing profile allows under
/// the name of `name` (dentry, vfsmount), built into `scratch` as a trie key; `None` when
/// the name cannot be built (the reason is in `detail`).
#[inline(always)]
fn name_allows(
    governed: &Governed,
    scratch: *mut PathScratch,
    buf: *mut u8,
    name: (*const u8, *const u8),
    root: (*const u8, *const u8),
    directory: bool,
    detail: &mut Detail,
) -> Option<u8> {
    let start = walk::<PATH_BUF_BYTES>(buf, name.0, name.1, root, directory, WALK_STEPS);
    if start <= 0 {
        detail.reason = reason::PATH_UNRESOLVED;
        detail.path_len = if start == 0 { -ENAMETOOLONG } else { start };
        return None;
    }
    let len = PATH_BUF_BYTES as u32 - start as u32;
    let copied = unsafe {
        generated::bpf_probe_read_kernel(
            (*scratch).path.as_mut_ptr() as *mut c_void,
            len & (PATH_BUF_BYTES as u32 - 1),
            buf.add(start as usize & (PATH_BUF_BYTES - 1)) as *const c_void,
        )
    };
    if copied != 0 {
        detail.reason = reason::READ_FAILED;
        return None;
    }
    unsafe {
        (*scratch).path[len as usize & (PATH_BUF_BYTES - 1)] = 0;
        (*scratch).prefix_len = PATH_KEY_BITS;
        (*scratch).profile_id = governed.profile_id.to_be_bytes();
    }
    detail.path_len = len as i32 + 1;
    let key = unsafe { as_path_key(&*scratch) };
    let (found, rules_below) = FILE_RULES.get(key).map_or((0, 0), |r| {
        (u16::from(r.read) | (u16::from(r.write) << 8), r.beneath)
    });
    let exec = EXEC_RULES.get(key).map_or(v::NONE, |r| r.verdict);
    let exec_allowed = if exec == v::NONE {
        governed.config.exec_default == v::ALLOW
    } else {
        exec == v::ALLOW
    };
    let mut allows = 0;
    if !file_denied(governed, found, access::READ) {
        allows |= access::READ;
    }
    if !file_denied(governed, found, access::WRITE) {
        allows |= access::WRITE;
    }
    if exec_allowed {
        allows |= EXEC;
    }
    if rules_below != 0 {
        allows |= RULES_BELOW;
    }
    Some(allows)
}

#[inline(always)]
fn is_directory(dentry: *const u8) -> bool {
    let Ok(inode) = (unsafe { read_ptr(dentry.add(offsets::dentry_d_inode())) }) else {
        return false;
    };
    if inode.is_null() {
        return false;
    }
    unsafe { bpf_probe_read_kernel(inode.add(offsets::inode_i_mode()) as *const u16) }
        .is_ok_and(|mode| mode & S_IFMT == S_IFDIR)
}

/// `current->fs->root` as (dentry, vfsmount), or nulls (walk to the mount tree's root).
#[inline(always)]
fn task_root() -> (*const u8, *const u8) {
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
