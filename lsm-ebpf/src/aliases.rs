//! Second names for a file: hard links and renames made by governed tasks (`path_link`,
//! `path_rename`), and other mounts of the root filesystem (`root_mount_name_denied`, called
//! by the open, exec and mapping decisions).
//!
//! Rules match paths, so giving an existing
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
//! `bpf_d_path` is not available in the link and rename hooks and the new name is not a
//! `struct path`, so both names are built by `path_walk` from their dentry and mount (a hard link never crosses
//! a mount: the kernel refuses it with EXDEV before this hook).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::lsm,
    maps::lpm_trie::Key,
    programs::LsmContext,
};
use core::ptr::{read_volatile, write_volatile};
use enforcerd_common::{PathKey, access, hook, reason, verdict as v};

use crate::{
    decide::{Detail, EPERM, Governed, governing_profile, verdict},
    file_verdicts::is_directory_mode,
    maps::{EXEC_RULES, FILE_RULES, PathScratch, SCRATCH, WALK_BUFFER, WalkBuffer},
    offsets,
    path_walk::{build_name, read_ptr, task_root},
    programs::{PATH_KEY_BITS, as_path_key, file_denied, lookup_name},
};

const RENAME_EXCHANGE: u32 = 2;
/// How often a link or rename decision is tried when another task's run overwrote the
/// per-CPU buffers meanwhile (then `contended`, denied). Two, not `PATH_ATTEMPTS`: every
/// attempt is verified separately, and four made these the programs slowest to verify
/// (240,000 instructions for `path_rename` on 7.2 instead of 110,000); a second collision
/// within one decision is far rarer than the first.
const NAME_ATTEMPTS: u32 = 2;
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
    let Some(buffers) = Buffers::get() else {
        return -EPERM;
    };
    let mut detail = Detail::new(hook::FILE);
    detail.reason = reason::LINK;
    detail.dentry = old_dentry;
    detail.scratch = buffers.scratch;
    let denied = match unsafe { read_ptr(new_dir.add(offsets::path_mnt())) } {
        Ok(mnt) => new_name_denied(
            &governed,
            &buffers,
            (old_dentry, mnt),
            (new_dentry, mnt),
            &mut detail,
        ),
        Err(_) => {
            detail.reason = reason::READ_FAILED;
            true
        }
    };
    verdict(&governed, denied, &mut detail)
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
    let Some(buffers) = Buffers::get() else {
        return -EPERM;
    };
    let mut detail = Detail::new(hook::FILE);
    detail.reason = reason::RENAME;
    detail.dentry = old_dentry;
    detail.scratch = buffers.scratch;
    let denied = match unsafe {
        (
            read_ptr(old_dir.add(offsets::path_mnt())),
            read_ptr(new_dir.add(offsets::path_mnt())),
        )
    } {
        (Ok(old_mnt), Ok(new_mnt)) => {
            let old = (old_dentry, old_mnt);
            let new = (new_dentry, new_mnt);
            new_name_denied(&governed, &buffers, old, new, &mut detail)
                || (flags & RENAME_EXCHANGE != 0 && {
                    detail.dentry = new_dentry;
                    new_name_denied(&governed, &buffers, new, old, &mut detail)
                })
        }
        _ => {
            detail.reason = reason::READ_FAILED;
            true
        }
    };
    verdict(&governed, denied, &mut detail)
}

/// The per-CPU buffers of a link or rename decision. Lookups of index 0 in one-entry arrays,
/// which cannot fail; the hooks refuse (unreported) if they ever did.
struct Buffers {
    scratch: *mut PathScratch,
    walk: *mut WalkBuffer,
}

impl Buffers {
    #[inline(always)]
    fn get() -> Option<Buffers> {
        Some(Buffers {
            scratch: SCRATCH.get_ptr_mut(0)?,
            walk: WALK_BUFFER.get_ptr_mut(0)?,
        })
    }
}

/// Whether `current` (a dentry and the vfsmount it is seen through) may not also or instead
/// be called `new`: true when `new` allows an access `current` denies, when either name is a
/// directory with rules below it, or when a name cannot be built (undecidable; `detail` says
/// why). Names are built relative to the task's root, as `file_open` sees them. On a denial
/// `detail` holds the current name and what `new` adds.
#[inline(always)]
fn new_name_denied(
    governed: &Governed,
    buffers: &Buffers,
    current: (*const u8, *const u8),
    new: (*const u8, *const u8),
    detail: &mut Detail,
) -> bool {
    let scratch = buffers.scratch;
    let buf = unsafe { (*buffers.walk).bytes.as_mut_ptr() };
    let out = unsafe { &raw mut (*buffers.walk).allows };
    // A directory's names are decided with a trailing "/", so that subtree rules naming the
    // directory itself apply to it.
    let directory = is_directory(current.0);
    let root = task_root();
    let me = bpf_get_current_pid_tgid();
    let mut attempt = 0;
    while attempt < NAME_ATTEMPTS {
        attempt += 1;
        unsafe { write_volatile(&mut (*scratch).owner, me) };
        // The current name last: it stays in the scratch buffer for the report. Each answer
        // goes through map memory, which the verifier reads back as an unknown value: kept in
        // registers, every combination of the two answers would be verified separately.
        let new_out = unsafe { &raw mut (*out)[0] };
        let current_out = unsafe { &raw mut (*out)[1] };
        let mut allows =
            |name, out| name_allows(governed, scratch, buf, name, root, directory, detail, out);
        let built = allows(new, new_out) && allows(current, current_out);
        if !built {
            return true;
        }
        // Read before the owner check, so that the check covers them too.
        let (new_allows, current_allows) =
            unsafe { (read_volatile(new_out), read_volatile(current_out)) };
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

/// Writes to `out` the accesses (`access::READ`, `access::WRITE`, `EXEC`, and `RULES_BELOW`)
/// the governing profile allows under the name of `name` (dentry, vfsmount), built into
/// `scratch` as a trie key; false when the name cannot be built (the reason is in `detail`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn name_allows(
    governed: &Governed,
    scratch: *mut PathScratch,
    buf: *mut u8,
    name: (*const u8, *const u8),
    root: (*const u8, *const u8),
    directory: bool,
    detail: &mut Detail,
    out: *mut u8,
) -> bool {
    let len = build_name(scratch, buf, name.0, name.1, root, directory);
    detail.path_len = len;
    if len <= 0 {
        detail.reason = reason::PATH_UNRESOLVED;
        return false;
    }
    unsafe {
        (*scratch).prefix_len = PATH_KEY_BITS;
        (*scratch).profile_id = governed.profile_id.to_be_bytes();
    }
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
    unsafe { write_volatile(out, allows) };
    true
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
        .is_ok_and(is_directory_mode)
}

/// A file reached through a mount of the task's root filesystem other than the task's root
/// mount — a bind mount of part of it, or the whole filesystem mounted again — has a second
/// name: its path on the root mount. Rules match paths, so a profile that denies
/// `/srv/secret` must not allow it as `/allowed/x` because someone bind-mounted it there (root
/// outside the workload, or the workload itself in a user and mount namespace of its own).
/// Whether that second name is denied by `denies(lookup(key))`, for a file whose own path was
/// allowed; false for a file that has none. Files on other filesystems (`/proc`, a tmpfs, a
/// container's volumes) and tasks whose root is not their filesystem's root are not covered:
/// their filesystem's "own" mount cannot be told from here.
#[inline(always)]
pub fn root_mount_name_denied<T: Copy>(
    governed: &Governed,
    file: *const u8,
    detail: &mut Detail,
    lookup: impl Fn(&Key<PathKey>) -> T,
    denies: impl Fn(T) -> bool,
) -> bool {
    let (dentry, root) = match root_mount_alias(file) {
        Ok(Some(alias)) => alias,
        Ok(None) => return false,
        Err(()) => {
            detail.reason = reason::READ_FAILED;
            return true;
        }
    };
    let Some(walk_buffer) = WALK_BUFFER.get_ptr_mut(0) else {
        detail.reason = reason::READ_FAILED;
        return true;
    };
    let buf = unsafe { (*walk_buffer).bytes.as_mut_ptr() };
    // The name on the root mount: up the dentries to the filesystem's root, which is the
    // task's root there.
    let fill = |scratch: *mut PathScratch| build_name(scratch, buf, dentry, root.1, root, false);
    match lookup_name(governed, detail, fill, lookup) {
        Some(found) => {
            let denied = denies(found);
            if denied {
                detail.reason = reason::MOUNT_ALIAS;
            }
            denied
        }
        None => true,
    }
}

/// `Some((dentry, task root))` when `file` is on another mount of the task's root filesystem
/// than the task's root mount, and the task's root is that filesystem's root; `Err` when a
/// kernel read failed.
#[inline(always)]
fn root_mount_alias(file: *const u8) -> Result<Option<(*const u8, (*const u8, *const u8))>, ()> {
    let (root_dentry, root_mnt) = task_root();
    if root_mnt.is_null() {
        return Err(());
    }
    let f_path = unsafe { file.add(offsets::file_f_path()) };
    let read = |at: *const u8| unsafe { read_ptr(at) }.map_err(|_| ());
    let mnt = read(unsafe { f_path.add(offsets::path_mnt()) })?;
    if mnt == root_mnt {
        return Ok(None);
    }
    let sb = read(unsafe { mnt.add(offsets::vfsmount_mnt_sb()) })?;
    let root_sb = read(unsafe { root_mnt.add(offsets::vfsmount_mnt_sb()) })?;
    if sb != root_sb {
        return Ok(None);
    }
    let s_root = read(unsafe { sb.add(offsets::super_block_s_root()) })?;
    if s_root != root_dentry {
        return Ok(None);
    }
    let dentry = read(unsafe { f_path.add(offsets::path_dentry()) })?;
    Ok(Some((dentry, (root_dentry, root_mnt))))
}
