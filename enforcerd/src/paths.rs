//! Every filesystem location enforcerd uses, defined once.

/// Default daemon configuration file.
pub const CONFIG_FILE: &str = "/etc/enforcerd/enforcerd.yaml";
/// Default directory of profile YAML files.
pub const PROFILES_DIR: &str = "/etc/enforcerd/profiles.d";
/// Default directory of trusted minisign public keys.
pub const TRUSTED_KEYS_DIR: &str = "/etc/enforcerd/trusted.d";
/// Runtime directory (control socket).
pub const RUN_DIR: &str = "/run/enforcerd";
/// The control socket of the running daemon (root only).
pub const CONTROL_SOCKET: &str = "/run/enforcerd/enforcerd.sock";
/// Persistent state (highest applied serials).
pub const STATE_DIR: &str = "/var/lib/enforcerd";
/// Where BPF programs, links and maps are pinned.
pub const BPFFS_DIR: &str = "/sys/fs/bpf/enforcerd";
/// Where the running kernel's BTF is.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The list of active LSMs.
pub const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";
/// The cgroup v2 mount point enforcerd expects (the systemd default).
pub const CGROUP2_MOUNT: &str = "/sys/fs/cgroup";
