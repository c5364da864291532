//! Kernel struct field offsets. Rust BPF has no CO-RE relocations, so the daemon reads these
//! from the running kernel's BTF and sets them before load. They live in `.rodata`, which the
//! loader freezes, so the verifier sees constants (a mutable global would make pointer
//! arithmetic with them unverifiable).
use core::ptr::read_volatile;

#[unsafe(no_mangle)]
static OFF_BPRM_FILE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_F_PATH: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_F_FLAGS: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_F_MODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SOCKET_TYPE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_REAL_PARENT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_MM: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MM_EXE_FILE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_PATH_MNT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_PATH_DENTRY: u64 = 0;
#[unsafe(no_mangle)]
static OFF_DENTRY_D_PARENT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_DENTRY_D_NAME: u64 = 0;
#[unsafe(no_mangle)]
static OFF_QSTR_LEN: u64 = 0;
#[unsafe(no_mangle)]
static OFF_QSTR_NAME: u64 = 0;
#[unsafe(no_mangle)]
static OFF_VFSMOUNT_MNT_ROOT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MOUNT_MNT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MOUNT_MNT_PARENT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MOUNT_MNT_MOUNTPOINT: u64 = 0;

#[unsafe(no_mangle)]
static OFF_FILE_F_INODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_I_INO: u64 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_I_SB: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SUPER_BLOCK_S_DEV: u64 = 0;
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: u64 = 0;
#[unsafe(no_mangle)]
static OFF_CGROUP_ROOT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_CGROUP_LEVEL: u64 = 0;
#[unsafe(no_mangle)]
static OFF_CGROUP_ROOT_HIERARCHY_ID: u64 = 0;
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MSGHDR_MSG_NAME: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SOCKET_SK: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SOCK_FAMILY: u64 = 0;
#[unsafe(no_mangle)]
static OFF_BPRM_BUF: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MM_SAVED_AUXV: u64 = 0;

#[unsafe(no_mangle)]
static OFF_TASK_FS: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FS_STRUCT_ROOT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_QSTR_HASH_LEN: u64 = 0;
#[unsafe(no_mangle)]
static OFF_INODE_I_MODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_DENTRY_D_INODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SUPER_BLOCK_S_ROOT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_VFSMOUNT_MNT_SB: u64 = 0;

/// Aggregation window (ns), set by the daemon; 0 turns aggregation off.
#[unsafe(no_mangle)]
static AGG_WINDOW_NS: u64 = 0;

// `read_volatile` keeps the compiler from folding the placeholder zeros into the code.
#[inline(always)]
pub fn bprm_file() -> usize {
    unsafe { read_volatile(&OFF_BPRM_FILE) as usize }
}
#[inline(always)]
pub fn file_f_path() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_PATH) as usize }
}
#[inline(always)]
pub fn file_f_flags() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_FLAGS) as usize }
}
#[inline(always)]
pub fn file_f_mode() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_MODE) as usize }
}
#[inline(always)]
pub fn socket_type() -> usize {
    unsafe { read_volatile(&OFF_SOCKET_TYPE) as usize }
}
#[inline(always)]
pub fn task_real_parent() -> usize {
    unsafe { read_volatile(&OFF_TASK_REAL_PARENT) as usize }
}
#[inline(always)]
pub fn task_tgid() -> usize {
    unsafe { read_volatile(&OFF_TASK_TGID) as usize }
}
#[inline(always)]
pub fn task_mm() -> usize {
    unsafe { read_volatile(&OFF_TASK_MM) as usize }
}
#[inline(always)]
pub fn mm_exe_file() -> usize {
    unsafe { read_volatile(&OFF_MM_EXE_FILE) as usize }
}
#[inline(always)]
pub fn path_mnt() -> usize {
    unsafe { read_volatile(&OFF_PATH_MNT) as usize }
}
#[inline(always)]
pub fn path_dentry() -> usize {
    unsafe { read_volatile(&OFF_PATH_DENTRY) as usize }
}
#[inline(always)]
pub fn dentry_d_parent() -> usize {
    unsafe { read_volatile(&OFF_DENTRY_D_PARENT) as usize }
}
#[inline(always)]
pub fn dentry_d_name() -> usize {
    unsafe { read_volatile(&OFF_DENTRY_D_NAME) as usize }
}
#[inline(always)]
pub fn qstr_len() -> usize {
    unsafe { read_volatile(&OFF_QSTR_LEN) as usize }
}
#[inline(always)]
pub fn qstr_name() -> usize {
    unsafe { read_volatile(&OFF_QSTR_NAME) as usize }
}
#[inline(always)]
pub fn vfsmount_mnt_root() -> usize {
    unsafe { read_volatile(&OFF_VFSMOUNT_MNT_ROOT) as usize }
}
#[inline(always)]
pub fn mount_mnt() -> usize {
    unsafe { read_volatile(&OFF_MOUNT_MNT) as usize }
}
#[inline(always)]
pub fn mount_mnt_parent() -> usize {
    unsafe { read_volatile(&OFF_MOUNT_MNT_PARENT) as usize }
}
#[inline(always)]
pub fn mount_mnt_mountpoint() -> usize {
    unsafe { read_volatile(&OFF_MOUNT_MNT_MOUNTPOINT) as usize }
}
#[inline(always)]
pub fn agg_window_ns() -> u64 {
    unsafe { read_volatile(&AGG_WINDOW_NS) }
}
#[inline(always)]
pub fn file_f_inode() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_INODE) as usize }
}
#[inline(always)]
pub fn inode_i_ino() -> usize {
    unsafe { read_volatile(&OFF_INODE_I_INO) as usize }
}
#[inline(always)]
pub fn inode_i_sb() -> usize {
    unsafe { read_volatile(&OFF_INODE_I_SB) as usize }
}
#[inline(always)]
pub fn super_block_s_dev() -> usize {
    unsafe { read_volatile(&OFF_SUPER_BLOCK_S_DEV) as usize }
}
#[inline(always)]
pub fn cgroup_kn() -> usize {
    unsafe { read_volatile(&OFF_CGROUP_KN) as usize }
}
#[inline(always)]
pub fn cgroup_root() -> usize {
    unsafe { read_volatile(&OFF_CGROUP_ROOT) as usize }
}
#[inline(always)]
pub fn cgroup_root_hierarchy_id() -> usize {
    unsafe { read_volatile(&OFF_CGROUP_ROOT_HIERARCHY_ID) as usize }
}
#[inline(always)]
pub fn kernfs_node_id() -> usize {
    unsafe { read_volatile(&OFF_KERNFS_NODE_ID) as usize }
}
#[inline(always)]
pub fn cgroup_level() -> usize {
    unsafe { read_volatile(&OFF_CGROUP_LEVEL) as usize }
}
#[inline(always)]
pub fn task_fs() -> usize {
    unsafe { read_volatile(&OFF_TASK_FS) as usize }
}
#[inline(always)]
pub fn fs_struct_root() -> usize {
    unsafe { read_volatile(&OFF_FS_STRUCT_ROOT) as usize }
}
#[inline(always)]
pub fn qstr_hash_len() -> usize {
    unsafe { read_volatile(&OFF_QSTR_HASH_LEN) as usize }
}
#[inline(always)]
pub fn inode_i_mode() -> usize {
    unsafe { read_volatile(&OFF_INODE_I_MODE) as usize }
}
#[inline(always)]
pub fn msghdr_msg_name() -> usize {
    unsafe { read_volatile(&OFF_MSGHDR_MSG_NAME) as usize }
}
#[inline(always)]
pub fn socket_sk() -> usize {
    unsafe { read_volatile(&OFF_SOCKET_SK) as usize }
}
#[inline(always)]
pub fn sock_family() -> usize {
    unsafe { read_volatile(&OFF_SOCK_FAMILY) as usize }
}
#[inline(always)]
pub fn bprm_buf() -> usize {
    unsafe { read_volatile(&OFF_BPRM_BUF) as usize }
}
#[inline(always)]
pub fn mm_saved_auxv() -> usize {
    unsafe { read_volatile(&OFF_MM_SAVED_AUXV) as usize }
}
#[inline(always)]
pub fn dentry_d_inode() -> usize {
    unsafe { read_volatile(&OFF_DENTRY_D_INODE) as usize }
}
#[inline(always)]
pub fn vfsmount_mnt_sb() -> usize {
    unsafe { read_volatile(&OFF_VFSMOUNT_MNT_SB) as usize }
}
#[inline(always)]
pub fn super_block_s_root() -> usize {
    unsafe { read_volatile(&OFF_SUPER_BLOCK_S_ROOT) as usize }
}
