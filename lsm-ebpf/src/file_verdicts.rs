//! Remembering allowed file opens, so that a governed task re-opening a file it was allowed to
//! open skips `bpf_d_path` and the rule trie (most of `file_open`'s cost).
//!
//! An entry is keyed by the dentry and holds the allowed lookup result with everything the
//! path string was a function of:
//! - the profile (ids are never reused for other rules);
//! - the task's root and the file's mount. Only files on the task's root mount are remembered:
//!   their path is the dentry chain up to the root dentry, whatever the mount tree around it
//!   looks like, so mounts and unmounts cannot change it;
//! - the dentry's parent and name (hash and length), and the inode and its number. So a
//!   dentry (or inode) freed and reused at the same address for another file never matches,
//!   and a reused one can only stand for the same file under the same name in the same parent;
//! - `PATHS_GENERATION`, read before the path was resolved, which the programs below increment
//!   when a rename (or a reconnected directory alias, through `d_instantiate`) may have moved
//!   a dentry, which changes the path of everything below it. An unlink or rmdir (after which
//!   the path reads "... (deleted)") drops the entry of that dentry.
//!
//! Denials are never answered from here: they take the full path, whose record carries it.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::lsm,
    programs::LsmContext,
};

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::read_volatile;

use crate::{
    maps::{CachedFileVerdict, FILE_VERDICTS, PATHS_GENERATION},
    offsets,
};

/// `S_IFMT` and `S_IFDIR` in `inode->i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

/// The current paths generation (read it before resolving a path).
#[inline(always)]
pub fn paths_generation() -> u64 {
    match PATHS_GENERATION.get_ptr(0) {
        Some(g) => unsafe { read_volatile(g) },
        None => 0,
    }
}

#[inline(always)]
fn bump_paths_generation() {
    if let Some(g) = PATHS_GENERATION.get_ptr_mut(0) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(g, 1) };
    }
}

/// Fills `out` with what identifies the path `file` was opened by (all but the generation,
/// profile and result) and returns the dentry, the cache key; 0 when the file cannot be
/// remembered (not on the task's root mount, or a read failed).
#[inline(always)]
pub fn opened_path(file: *const u8, out: &mut CachedFileVerdict) -> u64 {
    let read = |at: *const u8| unsafe { bpf_probe_read_kernel(at as *const u64) };
    let f_path = unsafe { file.add(offsets::file_f_path()) };
    let (Ok(mnt), Ok(dentry), Ok(inode)) = (
        read(unsafe { f_path.add(offsets::path_mnt()) }),
        read(unsafe { f_path.add(offsets::path_dentry()) }),
        read(unsafe { file.add(offsets::file_f_inode()) }),
    ) else {
        return 0;
    };
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(fs) = read(unsafe { task.add(offsets::task_fs()) }) else {
        return 0;
    };
    let root = fs as *const u8;
    let (Ok(root_mnt), Ok(root_dentry)) = (
        read(unsafe { root.add(offsets::fs_struct_root() + offsets::path_mnt()) }),
        read(unsafe { root.add(offsets::fs_struct_root() + offsets::path_dentry()) }),
    ) else {
        return 0;
    };
    if root_mnt != mnt || dentry == 0 {
        return 0;
    }
    let d = dentry as *const u8;
    let (Ok(parent), Ok(hash_len), Ok(ino)) = (
        read(unsafe { d.add(offsets::dentry_d_parent()) }),
        read(unsafe { d.add(offsets::dentry_d_name() + offsets::qstr_hash_len()) }),
        read(unsafe { (inode as *const u8).add(offsets::inode_i_ino()) }),
    ) else {
        return 0;
    };
    out.root_dentry = root_dentry;
    out.mnt = mnt;
    out.parent = parent;
    out.hash_len = hash_len;
    out.inode = inode;
    out.ino = ino;
    dentry
}

/// The remembered lookup result for this open, if there is one that still holds.
#[inline(always)]
pub fn remembered(dentry: u64, now: &CachedFileVerdict) -> Option<u16> {
    let e = unsafe { FILE_VERDICTS.get(&dentry) }?;
    let same = e.paths_generation == now.paths_generation
        && e.profile_id == now.profile_id
        && e.root_dentry == now.root_dentry
        && e.mnt == now.mnt
        && e.parent == now.parent
        && e.hash_len == now.hash_len
        && e.inode == now.inode
        && e.ino == now.ino;
    if same { Some(e.found) } else { None }
}

#[inline(always)]
pub fn remember(dentry: u64, entry: &CachedFileVerdict) {
    let _ = FILE_VERDICTS.insert(&dentry, entry, 0);
}

/// A rename moves a dentry, and so the path of everything below it.
#[lsm(hook = "inode_rename")]
pub fn inode_rename(ctx: LsmContext) -> i32 {
    bump_paths_generation();
    // The previous program's verdict (the hook has four arguments).
    ctx.arg(4)
}

/// An unlinked file's path reads "... (deleted)" from now on.
#[lsm(hook = "inode_unlink")]
pub fn inode_unlink(ctx: LsmContext) -> i32 {
    forget_dentry(ctx.arg(1));
    ctx.arg(2)
}

#[lsm(hook = "inode_rmdir")]
pub fn inode_rmdir(ctx: LsmContext) -> i32 {
    forget_dentry(ctx.arg(1));
    ctx.arg(2)
}

#[inline(always)]
fn forget_dentry(dentry: u64) {
    let _ = FILE_VERDICTS.remove(&dentry);
}

/// `d_splice_alias` can move an existing alias of a directory (a disconnected one being
/// reconnected, or a directory a network filesystem's server renamed) without a rename hook;
/// it calls this hook first. Directory instantiations are rare once the dentry cache is warm.
#[lsm(hook = "d_instantiate")]
pub fn d_instantiate(ctx: LsmContext) -> i32 {
    let inode: *const u8 = ctx.arg(1);
    if inode.is_null() {
        return 0;
    }
    if let Ok(mode) =
        unsafe { bpf_probe_read_kernel(inode.add(offsets::inode_i_mode()) as *const u16) }
        && mode & S_IFMT == S_IFDIR
    {
        bump_paths_generation();
    }
    0
}
