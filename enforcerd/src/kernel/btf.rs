//! Struct field offsets of the running kernel, read from its BTF. Rust BPF programs have no
//! CO-RE relocations, so these are handed to the programs as read-only globals at load time;
//! that is how one binary runs on every kernel (the layouts really differ between 6.1, 6.12
//! and 7.x).
use std::path::Path;

use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF {path}: {error}")]
    Read { path: String, error: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("kernel BTF: {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

/// Byte offsets of the fields the programs read, with the global each is written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub bprm_file: u64,
    pub file_f_path: u64,
    pub file_f_flags: u64,
    pub file_f_mode: u64,
    pub socket_type: u64,
    pub task_real_parent: u64,
    pub task_tgid: u64,
    pub task_mm: u64,
    pub mm_exe_file: u64,
    pub path_mnt: u64,
    pub path_dentry: u64,
    pub dentry_d_parent: u64,
    pub dentry_d_name: u64,
    pub qstr_len: u64,
    pub qstr_name: u64,
    pub vfsmount_mnt_root: u64,
    pub mount_mnt: u64,
    pub mount_mnt_parent: u64,
    pub mount_mnt_mountpoint: u64,
    pub file_f_inode: u64,
    pub inode_i_ino: u64,
    pub inode_i_sb: u64,
    pub super_block_s_dev: u64,
    pub cgroup_kn: u64,
    pub cgroup_root: u64,
    pub cgroup_level: u64,
    pub cgroup_root_hierarchy_id: u64,
    pub kernfs_node_id: u64,
    pub task_fs: u64,
    pub fs_struct_root: u64,
    pub qstr_hash_len: u64,
    pub inode_i_mode: u64,
    pub dentry_d_inode: u64,
    pub super_block_s_root: u64,
    pub vfsmount_mnt_sb: u64,
    pub msghdr_msg_name: u64,
    pub socket_sk: u64,
    pub sock_family: u64,
    pub bprm_buf: u64,
    pub mm_saved_auxv: u64,
}

impl Offsets {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|e| BtfError::Read {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        Ok(Offsets {
            bprm_file: member_offset(&btf, "linux_binprm", "file")?,
            file_f_path: member_offset(&btf, "file", "f_path")?,
            file_f_flags: member_offset(&btf, "file", "f_flags")?,
            file_f_mode: member_offset(&btf, "file", "f_mode")?,
            socket_type: member_offset(&btf, "socket", "type")?,
            task_real_parent: member_offset(&btf, "task_struct", "real_parent")?,
            task_tgid: member_offset(&btf, "task_struct", "tgid")?,
            task_mm: member_offset(&btf, "task_struct", "mm")?,
            mm_exe_file: member_offset(&btf, "mm_struct", "exe_file")?,
            path_mnt: member_offset(&btf, "path", "mnt")?,
            path_dentry: member_offset(&btf, "path", "dentry")?,
            dentry_d_parent: member_offset(&btf, "dentry", "d_parent")?,
            dentry_d_name: member_offset(&btf, "dentry", "d_name")?,
            qstr_len: member_offset(&btf, "qstr", "len")?,
            qstr_name: member_offset(&btf, "qstr", "name")?,
            vfsmount_mnt_root: member_offset(&btf, "vfsmount", "mnt_root")?,
            mount_mnt: member_offset(&btf, "mount", "mnt")?,
            mount_mnt_parent: member_offset(&btf, "mount", "mnt_parent")?,
            mount_mnt_mountpoint: member_offset(&btf, "mount", "mnt_mountpoint")?,
            file_f_inode: member_offset(&btf, "file", "f_inode")?,
            inode_i_ino: member_offset(&btf, "inode", "i_ino")?,
            inode_i_sb: member_offset(&btf, "inode", "i_sb")?,
            super_block_s_dev: member_offset(&btf, "super_block", "s_dev")?,
            cgroup_kn: member_offset(&btf, "cgroup", "kn")?,
            cgroup_root: member_offset(&btf, "cgroup", "root")?,
            cgroup_level: member_offset(&btf, "cgroup", "level")?,
            cgroup_root_hierarchy_id: member_offset(&btf, "cgroup_root", "hierarchy_id")?,
            kernfs_node_id: member_offset(&btf, "kernfs_node", "id")?,
            task_fs: member_offset(&btf, "task_struct", "fs")?,
            fs_struct_root: member_offset(&btf, "fs_struct", "root")?,
            qstr_hash_len: member_offset(&btf, "qstr", "hash_len")?,
            inode_i_mode: member_offset(&btf, "inode", "i_mode")?,
            dentry_d_inode: member_offset(&btf, "dentry", "d_inode")?,
            super_block_s_root: member_offset(&btf, "super_block", "s_root")?,
            vfsmount_mnt_sb: member_offset(&btf, "vfsmount", "mnt_sb")?,
            msghdr_msg_name: member_offset(&btf, "msghdr", "msg_name")?,
            socket_sk: member_offset(&btf, "socket", "sk")?,
            sock_family: member_offset(&btf, "sock", "__sk_common")?
                + member_offset(&btf, "sock_common", "skc_family")?,
            bprm_buf: member_offset(&btf, "linux_binprm", "buf")?,
            mm_saved_auxv: member_offset(&btf, "mm_struct", "saved_auxv")?,
        })
    }

    /// (global name in the BPF object, value).
    pub fn globals(&self) -> [(&'static str, u64); 40] {
        use enforcerd_common::globals as g;
        [
            (g::BPRM_FILE, self.bprm_file),
            (g::FILE_F_PATH, self.file_f_path),
            (g::FILE_F_FLAGS, self.file_f_flags),
            (g::FILE_F_MODE, self.file_f_mode),
            (g::SOCKET_TYPE, self.socket_type),
            (g::TASK_REAL_PARENT, self.task_real_parent),
            (g::TASK_TGID, self.task_tgid),
            (g::TASK_MM, self.task_mm),
            (g::MM_EXE_FILE, self.mm_exe_file),
            (g::PATH_MNT, self.path_mnt),
            (g::PATH_DENTRY, self.path_dentry),
            (g::DENTRY_D_PARENT, self.dentry_d_parent),
            (g::DENTRY_D_NAME, self.dentry_d_name),
            (g::QSTR_LEN, self.qstr_len),
            (g::QSTR_NAME, self.qstr_name),
            (g::VFSMOUNT_MNT_ROOT, self.vfsmount_mnt_root),
            (g::MOUNT_MNT, self.mount_mnt),
            (g::MOUNT_MNT_PARENT, self.mount_mnt_parent),
            (g::MOUNT_MNT_MOUNTPOINT, self.mount_mnt_mountpoint),
            (g::FILE_F_INODE, self.file_f_inode),
            (g::INODE_I_INO, self.inode_i_ino),
            (g::INODE_I_SB, self.inode_i_sb),
            (g::SUPER_BLOCK_S_DEV, self.super_block_s_dev),
            (g::CGROUP_KN, self.cgroup_kn),
            (g::CGROUP_ROOT, self.cgroup_root),
            (g::CGROUP_LEVEL, self.cgroup_level),
            (g::CGROUP_ROOT_HIERARCHY_ID, self.cgroup_root_hierarchy_id),
            (g::KERNFS_NODE_ID, self.kernfs_node_id),
            (g::TASK_FS, self.task_fs),
            (g::FS_STRUCT_ROOT, self.fs_struct_root),
            (g::QSTR_HASH_LEN, self.qstr_hash_len),
            (g::INODE_I_MODE, self.inode_i_mode),
            (g::DENTRY_D_INODE, self.dentry_d_inode),
            (g::SUPER_BLOCK_S_ROOT, self.super_block_s_root),
            (g::VFSMOUNT_MNT_SB, self.vfsmount_mnt_sb),
            (g::MSGHDR_MSG_NAME, self.msghdr_msg_name),
            (g::SOCKET_SK, self.socket_sk),
            (g::SOCK_FAMILY, self.sock_family),
            (g::BPRM_BUF, self.bprm_buf),
            (g::MM_SAVED_AUXV, self.mm_saved_auxv),
        ]
    }
}

/// Byte offset of `member` in `struct strukt`, looking through anonymous struct/union members
/// (the kernel wraps fields in them, e.g. `struct file` on 6.12+).
fn member_offset(btf: &Btf, strukt: &str, member: &str) -> Result<u64, BtfError> {
    let types = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| BtfError::NoStruct(strukt.into()))?;
    for t in types {
        if let Type::Struct(s) = t {
            return match find_member(btf, &s, member) {
                Some(Ok(bits)) => Ok(u64::from(bits / 8)),
                Some(Err(())) => Err(BtfError::Bitfield(strukt.into(), member.into())),
                None => Err(BtfError::NoMember(strukt.into(), member.into())),
            };
        }
    }
    Err(BtfError::NoStruct(strukt.into()))
}

/// Bit offset of `name` in `s`; `Some(Err(()))` for a bitfield or unaligned member.
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<Result<u32, ()>> {
    for m in &s.members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        if member_name == name {
            let bits = m.bit_offset();
            if m.bitfield_size().is_some_and(|size| size != 0) || bits % 8 != 0 {
                return Some(Err(()));
            }
            return Some(Ok(bits));
        }
        if member_name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(found) = find_member(btf, &inner, name)
        {
            return Some(found.map(|bits| bits + m.bit_offset()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the build machine's own kernel BTF when it has one (it only parses; nothing is
    /// loaded). The VM suite covers the kernel matrix.
    #[test]
    fn reads_offsets_from_this_machines_kernel() {
        let path = Path::new(crate::paths::KERNEL_BTF);
        if !path.exists() {
            eprintln!("skipped: {} does not exist on this machine", path.display());
            return;
        }
        let o = Offsets::from_file(path).unwrap();
        // Plausibility: f_path is a 16-byte struct path, so f_flags/f_mode cannot overlap it,
        // and every field lies inside its struct.
        for (a, b) in [
            (o.file_f_flags, o.file_f_path),
            (o.file_f_mode, o.file_f_path),
        ] {
            assert!(a < b || a >= b + 16, "{o:?}");
        }
        assert!(o.bprm_file > 0 && o.bprm_file < 512, "{o:?}");
        assert!(o.task_tgid > 0 && o.task_real_parent > o.task_tgid, "{o:?}");
        // struct path is { mnt, dentry }; qstr's name follows its hash and len.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8), "{o:?}");
        assert_eq!((o.qstr_len, o.qstr_name), (4, 8), "{o:?}");
        // hash_len overlays hash and len.
        assert_eq!(o.qstr_hash_len, 0, "{o:?}");
        // The ELF header buffer and the auxiliary vector are arrays well inside their structs;
        // sk_family is in the sock_common at the start of struct sock.
        assert!(o.bprm_buf < 512 && o.mm_saved_auxv > 0, "{o:?}");
        assert!(o.msghdr_msg_name < 64 && o.sock_family < 64, "{o:?}");
    }

    #[test]
    fn missing_btf_file_is_a_precise_error() {
        let e = Offsets::from_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read kernel BTF /nonexistent/vmlinux")
        );
    }
}
