//! Can this kernel enforce? Checked before anything is loaded, so that `enforcerd run` fails
//! with a message that says what is missing and how to fix it (exit code 3).
use std::path::Path;

use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum CannotEnforce {
    #[error(
        "enforcerd must run as root (effective uid is {0}): loading BPF LSM programs needs \
         CAP_BPF and CAP_PERFMON, and dropping every other capability after that needs \
         CAP_SETPCAP"
    )]
    NotRoot(u32),
    #[error(
        "the BPF LSM is not active: {lsm_file} lists \"{active}\" without \"bpf\". Add bpf to the \
         kernel's LSM list, e.g. boot with lsm={active},bpf (on Debian: add it to \
         GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub and reboot); the kernel must \
         be built with CONFIG_BPF_LSM=y"
    )]
    BpfLsmInactive { lsm_file: String, active: String },
    #[error(
        "cannot read the list of active LSMs ({lsm_file}: {error}); is securityfs mounted? \
         (mount -t securityfs securityfs /sys/kernel/security)"
    )]
    LsmListUnreadable { lsm_file: String, error: String },
    #[error(
        "the kernel exposes no BTF at {0}: enforcerd needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Debian's kernels since 5.x are)"
    )]
    NoBtf(String),
}

/// Checks privileges, the active LSM list and BTF. `root` is the prefix under which `/sys` is
/// looked up (`/` in production; a fake tree in tests).
pub fn check(root: &Path, euid: u32) -> Result<(), CannotEnforce> {
    if euid != 0 {
        return Err(CannotEnforce::NotRoot(euid));
    }
    let lsm_file = root.join(paths::ACTIVE_LSMS.trim_start_matches('/'));
    let active =
        std::fs::read_to_string(&lsm_file).map_err(|e| CannotEnforce::LsmListUnreadable {
            lsm_file: lsm_file.display().to_string(),
            error: e.to_string(),
        })?;
    let active = active.trim().to_owned();
    if !active.split(',').any(|l| l == "bpf") {
        return Err(CannotEnforce::BpfLsmInactive {
            lsm_file: lsm_file.display().to_string(),
            active,
        });
    }
    let btf = root.join(paths::KERNEL_BTF.trim_start_matches('/'));
    if !btf.is_file() {
        return Err(CannotEnforce::NoBtf(btf.display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(lsm: Option<&str>, btf: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let sec = dir.path().join("sys/kernel/security");
        std::fs::create_dir_all(&sec).unwrap();
        if let Some(lsm) = lsm {
            std::fs::write(sec.join("lsm"), lsm).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("sys/kernel/btf")).unwrap();
        if btf {
            std::fs::write(dir.path().join("sys/kernel/btf/vmlinux"), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn accepts_bpf_in_lsm_list_with_btf() {
        let d = fake_sys(
            Some("lockdown,capability,landlock,yama,apparmor,bpf\n"),
            true,
        );
        check(d.path(), 0).unwrap();
    }

    #[test]
    fn refuses_non_root() {
        let d = fake_sys(Some("capability,bpf"), true);
        let e = check(d.path(), 1000).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("enforcerd must run as root (effective uid is 1000)")
        );
    }

    #[test]
    fn refuses_without_bpf_lsm_and_says_how_to_fix() {
        let d = fake_sys(Some("lockdown,capability,apparmor\n"), true);
        let e = check(d.path(), 0).unwrap_err().to_string();
        assert!(
            e.contains("lists \"lockdown,capability,apparmor\" without \"bpf\""),
            "{e}"
        );
        assert!(e.contains("lsm=lockdown,capability,apparmor,bpf"), "{e}");
    }

    #[test]
    fn bpf_must_be_a_whole_entry() {
        let d = fake_sys(Some("capability,notbpf"), true);
        assert!(matches!(
            check(d.path(), 0),
            Err(CannotEnforce::BpfLsmInactive { .. })
        ));
    }

    #[test]
    fn refuses_without_securityfs() {
        let d = fake_sys(None, true);
        let e = check(d.path(), 0).unwrap_err().to_string();
        assert!(e.contains("is securityfs mounted?"), "{e}");
    }

    #[test]
    fn refuses_without_btf() {
        let d = fake_sys(Some("bpf"), false);
        let e = check(d.path(), 0).unwrap_err().to_string();
        assert!(
            e.contains("exposes no BTF at") && e.contains("CONFIG_DEBUG_INFO_BTF"),
            "{e}"
        );
    }
}
