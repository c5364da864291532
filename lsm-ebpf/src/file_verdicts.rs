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
use aya_ebpf::{helpers::generated::bpf_get_current_task_btf, macros::lsm, programs::LsmContext};

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::read_volatile;

use crate::{
    maps::{CachedFileVerdict, FILE_VERDICTS, PATHS_GENERATION},
    offsets,
};

/// Whether an `inode->i_mode` is a directory's (`S_IFMT` bits equal to `S_IFDIR`).
#[inline(always)]
pub fn is_directory_mode(mode: u16) -> bool {
    const S_IFMT: u16 = 0o170000;
    const S_IFDIR: u16 = 0o040000;
    mode & S_IFMT == S_IFDIR
}

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
/// remembered (not on the task's root mount).
///
/// Plain loads through the kernel's typed pointers (`file`, the current task from
/// `bpf_get_current_task_btf`, and what the verifier derives from them) rather than
/// `bpf_probe_read_kernel`: this runs on every governed open, and the helper costs about as
/// much as the lookup it saves.
#[inline(always)]
pub fn opened_path(file: *const u8, out: &mut CachedFileVerdict) -> u64 {
    unsafe {
        let f_path = file.add(offsets::file_f_path());
        let mnt = *(f_path.add(offsets::path_mnt()) as *const u64);
        let dentry = *(f_path.add(offsets::path_dentry()) as *const *const u8);
        let inode = *(file.add(offsets::file_f_inode()) as *const *const u8);
        let task = bpf_get_current_task_btf() as *const u8;
        let fs = *(task.add(offsets::task_fs()) as *const *const u8);
        if fs.is_null() || dentry.is_null() || inode.is_null() {
            return 0;
        }
        let root = fs.add(offsets::fs_struct_root());
        let root_mnt = *(root.add(offsets::path_mnt()) as *const u64);
        if root_mnt != mnt {
            return 0;
        }
        let name = dentry.add(offsets::dentry_d_name());
        // The name's hash and length, read as the two u32s they are.
        let hash = *(name.add(offsets::qstr_hash_len()) as *const u32);
        let len = *(name.add(offsets::qstr_len()) as *const u32);
        out.root_dentry = *(root.add(offsets::path_dentry()) as *const u64);
        out.mnt = mnt;
        out.parent = *(dentry.add(offsets::dentry_d_parent()) as *const u64);
        out.hash_len = (u64::from(len) << 32) | u64::from(hash);
        out.inode = inode as u64;
        out.ino = *(inode.add(offsets::inode_i_ino()) as *const u64);
        dentry as u64
    }
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
    // A plain load through the hook's typed argument: this runs for every new socket and
    // pipe too, and the helper call would cost more than the rest of the program.
    let mode = unsafe { *(inode.add(offsets::inode_i_mode()) as *const u16) };
    if is_directory_mode(mode) {
        bump_paths_generation();
    }
    0
}
