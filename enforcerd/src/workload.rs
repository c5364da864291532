//! Workloads -> cgroup ids. A cgroup's id is the inode number of its directory on the cgroup2
//! filesystem; that is what `bpf_get_current_ancestor_cgroup_id` returns in the kernel.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use enforcerd_common::MAX_CGROUP_LEVELS;

use crate::{
    kubernetes::{self, Driver, Pods},
    profile::{Profile, Selector},
};

/// `CGROUP2_SUPER_MAGIC` from `statfs(2)`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup a profile governs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovernedCgroup {
    /// Path below the cgroup2 mount, e.g. `/system.slice/nginx.service`.
    pub path: String,
    pub id: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error("{0} is not a cgroup v2 filesystem (enforcerd needs the unified hierarchy)")]
    NotCgroup2(String),
    #[error("cgroup {cgroup} does not exist ({dir}: {error})")]
    MissingCgroup {
        cgroup: String,
        dir: String,
        error: String,
    },
    #[error(
        "cgroup {cgroup} is {levels} levels deep; the kernel programs look {max} levels deep at most"
    )]
    TooDeep {
        cgroup: String,
        levels: usize,
        max: usize,
    },
    #[error(
        "kubernetes selectors are inactive on this node: enforcerd has no Kubernetes API access \
         (not running in a pod, no kubeconfig) or NODE_NAME is unset"
    )]
    KubernetesInactive,
}

/// What a selector resolves to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Cgroups that exist now.
    pub cgroups: Vec<GovernedCgroup>,
    /// Paths (below the mount) bound to the profile in the kernel the instant a cgroup is
    /// created there; they may exist already (then they are in `cgroups` too).
    pub pending: Vec<String>,
}

/// The cgroup2 hierarchy, mounted at `root`.
pub struct CgroupFs {
    pub root: PathBuf,
}

impl CgroupFs {
    /// Checks that `root` is a cgroup2 mount.
    pub fn open(root: &Path) -> Result<Self, WorkloadError> {
        let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| WorkloadError::NotCgroup2(root.display().to_string()))?;
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and st a valid out-parameter.
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        if rc != 0 || st.f_type as i64 != CGROUP2_SUPER_MAGIC {
            return Err(WorkloadError::NotCgroup2(root.display().to_string()));
        }
        Ok(CgroupFs { root: root.into() })
    }

    /// The cgroups `profile` selects now, and the paths whose cgroups the kernel is to bind
    /// to it when they are created.
    ///
    /// A `systemdUnit` selects every cgroup directory named after the unit and expects
    /// `/system.slice/UNIT` (where systemd creates a system unit's cgroup unless the unit sets
    /// `Slice=`), so a unit that is not running yet, or restarts, is governed from the
    /// instant systemd creates its cgroup, before its process execs.
    ///
    /// A `kubernetes` selector expects the pod-level cgroup of every matching pod on this node
    /// (or, with `container`, that container's cgroup once its id is known), for both the
    /// systemd and the cgroupfs cgroup driver (see docs/kubernetes-cgroups.md); `pods` is
    /// `None` when Kubernetes is not reachable from this node.
    pub fn resolve(
        &self,
        profile: &Profile,
        pods: Option<&Pods>,
    ) -> Result<Resolved, WorkloadError> {
        match &profile.selector {
            Selector::Cgroup(path) => Ok(Resolved {
                cgroups: vec![self.cgroup(path)?],
                pending: vec![],
            }),
            Selector::SystemdUnit(unit) => {
                let mut pending = self.find_named(unit);
                let cgroups = pending.iter().filter_map(|p| self.cgroup(p).ok()).collect();
                pending.push(format!("/system.slice/{unit}"));
                pending.sort();
                pending.dedup();
                Ok(Resolved { cgroups, pending })
            }
            Selector::Kubernetes {
                namespace,
                pod_labels,
                container,
            } => {
                let pods = pods.ok_or(WorkloadError::KubernetesInactive)?;
                let mut pending: Vec<String> = pods
                    .values()
                    .filter(|pod| kubernetes::matches(namespace, pod_labels, pod))
                    .flat_map(|pod| {
                        Driver::ALL
                            .into_iter()
                            .filter_map(move |driver| match container {
                                None => Some(kubernetes::pod_cgroup(pod, driver)),
                                Some(c) => kubernetes::container_cgroup(pod, c, driver),
                            })
                    })
                    .collect();
                pending.sort();
                pending.dedup();
                let cgroups = pending.iter().filter_map(|p| self.cgroup(p).ok()).collect();
                Ok(Resolved { cgroups, pending })
            }
        }
    }

    /// The cgroup at `path` (below the mount).
    pub fn cgroup(&self, path: &str) -> Result<GovernedCgroup, WorkloadError> {
        let levels = path.split('/').filter(|c| !c.is_empty()).count();
        if levels >= MAX_CGROUP_LEVELS {
            return Err(WorkloadError::TooDeep {
                cgroup: path.into(),
                levels,
                max: MAX_CGROUP_LEVELS - 1,
            });
        }
        let dir = self.root.join(path.trim_start_matches('/'));
        let meta = std::fs::metadata(&dir).map_err(|e| WorkloadError::MissingCgroup {
            cgroup: path.into(),
            dir: dir.display().to_string(),
            error: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(WorkloadError::MissingCgroup {
                cgroup: path.into(),
                dir: dir.display().to_string(),
                error: "not a directory".into(),
            });
        }
        Ok(GovernedCgroup {
            path: path.into(),
            id: meta.ino(),
        })
    }

    /// Paths (below the mount) of every cgroup directory named `name`, bounded in depth.
    fn find_named(&self, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![(self.root.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let file_name = e.file_name().to_string_lossy().into_owned();
                let child = format!("{rel}/{file_name}");
                if file_name == name {
                    found.push(child.clone());
                }
                if depth + 1 < MAX_CGROUP_LEVELS - 1 {
                    stack.push((e.path(), child, depth + 1));
                }
            }
        }
        found.sort();
        found
    }

    /// Path below the mount of the cgroup with id `id`, searching below `under` (a known
    /// governed cgroup) first, then the whole hierarchy. For reports only.
    pub fn path_of(&self, id: u64, under: &[&str]) -> Option<String> {
        let starts = under
            .iter()
            .map(|u| u.to_string())
            .chain(std::iter::once(String::new()));
        for start in starts {
            let mut stack = vec![(
                self.root.join(start.trim_start_matches('/')),
                start.clone(),
                0usize,
            )];
            while let Some((dir, rel, depth)) = stack.pop() {
                if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
                    return Some(if rel.is_empty() { "/".into() } else { rel });
                }
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) && depth < MAX_CGROUP_LEVELS {
                        let child = format!("{rel}/{}", e.file_name().to_string_lossy());
                        stack.push((e.path(), child, depth + 1));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A plain directory tree stands in for the cgroup2 mount: `cgroup`/`find_named` only use
    // directories and inode numbers.
    fn tree() -> (tempfile::TempDir, CgroupFs) {
        let d = tempfile::tempdir().unwrap();
        for p in [
            "system.slice/nginx.service",
            "system.slice/cron.service/sub",
            "user.slice/nginx.service",
        ] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        let fs = CgroupFs {
            root: d.path().into(),
        };
        (d, fs)
    }

    #[test]
    fn cgroup_id_is_the_directory_inode() {
        let (d, fs) = tree();
        let g = fs.cgroup("/system.slice/nginx.service").unwrap();
        let ino = std::fs::metadata(d.path().join("system.slice/nginx.service"))
            .unwrap()
            .ino();
        assert_eq!(
            g,
            GovernedCgroup {
                path: "/system.slice/nginx.service".into(),
                id: ino
            }
        );
    }

    #[test]
    fn missing_cgroup_names_the_cgroup_and_the_directory() {
        let (d, fs) = tree();
        let e = fs
            .cgroup("/system.slice/absent.service")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cgroup /system.slice/absent.service does not exist ("),
            "{e}"
        );
        assert!(
            e.contains(
                &d.path()
                    .join("system.slice/absent.service")
                    .display()
                    .to_string()
            )
        );
    }

    #[test]
    fn too_deep_is_refused() {
        let (_d, fs) = tree();
        let deep = "/a".repeat(MAX_CGROUP_LEVELS);
        assert!(matches!(
            fs.cgroup(&deep),
            Err(WorkloadError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_systemd_unit_expects_its_system_slice_cgroup_even_before_it_runs() {
        let (_d, fs) = tree();
        let profile = |unit: &str| {
            let text = format!(
                "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {{name: u, serial: 1}}\nspec:\n  selector: {{systemdUnit: {unit}}}\n"
            );
            crate::profile::parse(Path::new("u.yaml"), text.as_bytes()).unwrap()
        };
        let r = fs.resolve(&profile("absent.service"), None).unwrap();
        assert!(r.cgroups.is_empty());
        assert_eq!(r.pending, ["/system.slice/absent.service"]);
        let r = fs.resolve(&profile("nginx.service"), None).unwrap();
        let paths: Vec<&str> = r.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/system.slice/nginx.service", "/user.slice/nginx.service"]
        );
        assert_eq!(
            r.pending,
            ["/system.slice/nginx.service", "/user.slice/nginx.service"]
        );
    }

    #[test]
    fn systemd_unit_finds_every_cgroup_with_that_name() {
        let (_d, fs) = tree();
        assert_eq!(
            fs.find_named("nginx.service"),
            vec![
                "/system.slice/nginx.service".to_string(),
                "/user.slice/nginx.service".to_string()
            ]
        );
        assert!(fs.find_named("absent.service").is_empty());
    }

    #[test]
    fn path_of_finds_a_child_cgroup_by_id() {
        let (d, fs) = tree();
        let ino = std::fs::metadata(d.path().join("system.slice/cron.service/sub"))
            .unwrap()
            .ino();
        assert_eq!(
            fs.path_of(ino, &["/system.slice/cron.service"]).as_deref(),
            Some("/system.slice/cron.service/sub")
        );
        assert_eq!(fs.path_of(1, &[]), None);
    }

    #[test]
    fn open_refuses_a_non_cgroup2_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupFs::open(d.path()),
            Err(WorkloadError::NotCgroup2(_))
        ));
    }
}
