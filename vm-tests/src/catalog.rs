//! The scenarios the guest runner knows, in the order one boot runs them. The host uses this
//! list to validate `--scenario` filters and to know which scenarios a boot still owes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    pub name: &'static str,
    /// Whether the scenario starts `enforcerd` (the initramfs must then contain it).
    pub needs_daemon: bool,
    pub about: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "environment",
        needs_daemon: false,
        about: "the VM itself: BPF LSM active, BTF, cgroup2, bpffs, loopback with IPv4 and IPv6",
    },
    Scenario {
        name: "exec_allowlist",
        needs_daemon: true,
        about: "exec default deny: denied binaries by path, relative path, .., symlink, fd; \
                script interpreters; ungoverned cgroups unaffected",
    },
    Scenario {
        name: "files",
        needs_daemon: true,
        about: "denied reads, read-only subtrees, longest rule wins, symlinks, ungoverned reads",
    },
    Scenario {
        name: "remembered_file_verdicts",
        needs_daemon: true,
        about: "allowed opens remembered per file are forgotten when a rename, unlink, another \
                root or a reload changes the answer",
    },
    Scenario {
        name: "connect",
        needs_daemon: true,
        about: "CIDR/port/protocol rules for IPv4, IPv6 and IPv4-mapped IPv6; deny rules",
    },
    Scenario {
        name: "kill_on_violation",
        needs_daemon: true,
        about: "onViolation kill: the offender dies by SIGKILL and the action did not happen",
    },
    Scenario {
        name: "audit_mode",
        needs_daemon: true,
        about: "mode audit: nothing is blocked, each would-be denial is reported",
    },
    Scenario {
        name: "nested_cgroups_and_namespaces",
        needs_daemon: true,
        about: "child cgroups created later, unshare(2) of namespaces and cgroup moves stay governed",
    },
    Scenario {
        name: "bad_input",
        needs_daemon: true,
        about: "malformed profiles are refused with file:line:col while valid ones are enforced; \
                10,000 file rules",
    },
    Scenario {
        name: "signed_profiles",
        needs_daemon: true,
        about: "only profiles signed by a trusted key are enforced; unsigned, untrusted-key, \
                tampered and malformed-signature profiles are refused by check and the daemon",
    },
    Scenario {
        name: "live_reload_without_gap",
        needs_daemon: true,
        about: "50 live replacements (directory and SIGHUP) with no denied open let through and \
                no allowed open failed; tampered and rolled-back versions refused, also after a \
                restart; reload latency",
    },
    Scenario {
        name: "status_and_permissions",
        needs_daemon: true,
        about: "status --json shows programs, profiles (serial, sha256, cgroups, counters) and the \
                last reload, to root only",
    },
    Scenario {
        name: "decision_reports",
        needs_daemon: true,
        about: "exec, file and connect denials, a kill and an audit hit: every field of each \
                decision in `enforcerd events --json`, readable lines, and the metrics counters",
    },
    Scenario {
        name: "denial_burst",
        needs_daemon: true,
        about: "200,000 denied opens: all denied; reported + aggregated + dropped is exact; \
                decision lines add up; bounded daemon memory",
    },
    Scenario {
        name: "systemd_unit_restart",
        needs_daemon: true,
        about: "a systemdUnit profile governs the unit's cgroup from its creation (cgroup_mkdir): \
                30 restarts, each first open denied; status follows; replacement and stop",
    },
    Scenario {
        name: "kubernetes_pods",
        needs_daemon: true,
        about: "pods from a stand-in API server: containerd/systemd and CRI-O/cgroupfs pod \
                cgroups created after the profile, first exec denied; node default until a pod \
                is known; known unselected pods untouched; pod event latency",
    },
    Scenario {
        name: "capability_bounding_set",
        needs_daemon: true,
        about: "started with only the unit's CapabilityBoundingSet the daemon enforces; without \
                any one of them it refuses to start (exit 3) and attaches nothing",
    },
    Scenario {
        name: "daemon_footprint",
        needs_daemon: true,
        about: "100 profiles for 100 cgroups are applied and enforced; start-up to READY=1, \
                RSS and idle CPU are noted",
    },
    Scenario {
        name: "daemon_sigkill_and_restart",
        needs_daemon: true,
        about: "a workload loops on a denied open while the daemon is SIGKILLed, restarted, \
                stopped and started again: pinned programs keep enforcing, not one open \
                succeeds, reports resume after each start",
    },
    Scenario {
        name: "upgrade_to_rebuilt_binary",
        needs_daemon: true,
        about: "the same across an upgrade to a build with another BPF object: the new \
                programs attach before the old ones are retired",
    },
    Scenario {
        name: "attack_exec_via_dynamic_loader",
        needs_daemon: true,
        about: "ld.so /opt/denied/binary: denied when the loader is not allowed, and when it is \
                (the program it maps is decided as an exec), also with a preload; audit: reported",
    },
    Scenario {
        name: "attack_exec_from_fd",
        needs_daemon: true,
        about: "fexecve of a memfd holding busybox and execveat(fd, \"\", AT_EMPTY_PATH) of a denied \
                binary: denied; audit: run and reported",
    },
    Scenario {
        name: "attack_exec_via_link_in_allowed_dir",
        needs_daemon: true,
        about: "symlink, hard link (made by the workload) and bind mount of a denied binary in an \
                allowed directory: denied, link reported in audit; root's hard link runs (by design)",
    },
    Scenario {
        name: "attack_file_aliases",
        needs_daemon: true,
        about: "the workload's links and renames of denied files and directories into the allowed \
                tree, bind mounts of denied files (root's, the workload's, in a user namespace), \
                /proc/self/fd re-opens of inherited and O_PATH fds: denied, reported in audit; \
                root's rename runs (by design)",
    },
    Scenario {
        name: "attack_connect_bypass",
        needs_daemon: true,
        about: "IPv4-mapped IPv6 connect, UDP sendto/sendmsg without connect (also AF_UNSPEC), \
                TCP Fast Open to a denied address: denied, nothing arrives; audit: reported",
    },
    Scenario {
        name: "attack_io_uring",
        needs_daemon: true,
        about: "io_uring openat of a denied file, connect and sendmsg to a denied address: cqe res \
                -EPERM (or io_uring unavailable); audit: succeed and reported",
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The scenarios a filter selects, in catalog order; every name must exist.
pub fn select(filter: &[String]) -> Result<Vec<&'static Scenario>, String> {
    for name in filter {
        if find(name).is_none() {
            let known: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
            return Err(format!(
                "unknown scenario {name:?}; known: {}",
                known.join(", ")
            ));
        }
    }
    Ok(SCENARIOS
        .iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|f| f == s.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_catalog_order_and_rejects_unknown_names() {
        let all = select(&[]).unwrap();
        assert_eq!(all.len(), SCENARIOS.len());
        let some = select(&["files".into(), "environment".into()]).unwrap();
        let names: Vec<_> = some.iter().map(|s| s.name).collect();
        assert_eq!(names, ["environment", "files"]);
        assert!(
            select(&["nope".into()])
                .unwrap_err()
                .contains("exec_allowlist")
        );
    }

    #[test]
    fn names_are_unique_and_cmdline_safe() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(s.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(SCENARIOS[i + 1..].iter().all(|o| o.name != s.name));
        }
    }
}
