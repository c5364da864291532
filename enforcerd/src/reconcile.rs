//! Bringing the kernel from the profiles it enforces to the profiles on disk, one profile at a
//! time and without a gap:
//!
//! 1. a new or changed profile gets a fresh id, and its whole rule set is written under it
//!    while nothing points at that id;
//! 2. its cgroups are flipped to the new id (one atomic map update per cgroup), so a task is
//!    governed by the old version or the new one, never by a mix and never by none;
//! 3. cgroups that no profile governs any more are released;
//! 4. after an RCU grace period (no program run can still hold an old id), cgroups the kernel
//!    bound to an old id on its own (at their creation, from a pending path) are moved to the
//!    new id, and after another grace period the old rule sets are deleted.
//!
//! Paths a profile expects (a systemd unit's cgroup that does not exist yet) are *pending*:
//! the kernel binds such a cgroup to the profile's id when it is created. When only the set
//! of cgroups of an unchanged profile changes (a unit restarted, a pod started), the cgroups
//! are retargeted under the same id: no rule is rewritten.
//!
//! A profile whose file fails to load keeps its previous version in force; a profile whose file
//! was deleted stops being enforced only in a reload that has validated everything else. The
//! kernel side is behind [`KernelMaps`], so the whole procedure is tested in memory.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use enforcerd_common::capacity;

use crate::{
    compile::{self, CompiledProfile},
    kernel::loader::LoadError,
    profile::Profile,
    workload::GovernedCgroup,
};

/// The map operations a reload needs (implemented by [`crate::kernel::Enforcer`]).
pub trait KernelMaps {
    /// Writes a profile's rules and settings under its id; on error nothing of it remains.
    fn insert_profile(&mut self, p: &CompiledProfile) -> Result<(), LoadError>;
    fn remove_profile(&mut self, p: &CompiledProfile);
    fn govern(&mut self, cgroups: &[(u64, u32)]) -> Result<(), LoadError>;
    fn ungovern(&mut self, cgroups: &[u64]) -> Result<(), LoadError>;
    /// Makes the kernel govern each path's cgroup with the id from the moment it is created.
    fn pend(&mut self, paths: &[String], id: u32) -> Result<(), LoadError>;
    fn unpend(&mut self, paths: &[String]);
    /// Moves every governed cgroup that points at `from` to `to` (`None`: ungoverns it);
    /// returns how many there were.
    fn rebind(&mut self, from: u32, to: Option<u32>) -> Result<usize, LoadError>;
    /// Returns once no program run can still be using ids read before the call.
    fn synchronize(&self);
}

/// A profile that passed every check, with the cgroups it governs now and the cgroup paths
/// the kernel is to bind to it when they are created.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub profile: Profile,
    pub cgroups: Vec<GovernedCgroup>,
    pub pending: Vec<String>,
}

/// A profile the kernel enforces.
#[derive(Clone, Debug)]
pub struct Applied {
    pub profile: Profile,
    pub cgroups: Vec<GovernedCgroup>,
    pub pending: Vec<String>,
    pub compiled: CompiledProfile,
}

impl Applied {
    pub fn id(&self) -> u32 {
        self.compiled.id
    }

    /// Same rules: only the cgroups (and pending paths) may differ, which `retarget` handles
    /// under the same id.
    fn same_as(&self, a: &Accepted) -> bool {
        self.profile == a.profile
    }
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Profiles whose previous version stays in force because their file failed.
    pub kept: Vec<String>,
    /// `FILE: message` for every refusal.
    pub problems: Vec<String>,
}

/// Entries in use per map, to refuse a profile before the kernel map overflows (while a
/// profile is swapped, its old and new rule sets both exist).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    exec: usize,
    files: usize,
    net: usize,
    profiles: usize,
}

impl Usage {
    fn add(&mut self, p: &CompiledProfile) {
        self.exec += p.exec_rules.len();
        self.files += p.file_rules.len();
        self.net += p.net_rules.len();
        self.profiles += 1;
    }

    fn remove(&mut self, p: &CompiledProfile) {
        self.exec -= p.exec_rules.len();
        self.files -= p.file_rules.len();
        self.net -= p.net_rules.len();
        self.profiles -= 1;
    }

    /// The first map `p` would overflow, as (name, entries, capacity).
    fn overflow(&self, p: &CompiledProfile) -> Option<(&'static str, usize, u32)> {
        [
            ("exec", self.exec + p.exec_rules.len(), capacity::EXEC_RULES),
            (
                "file",
                self.files + p.file_rules.len(),
                capacity::FILE_RULES,
            ),
            ("connect", self.net + p.net_rules.len(), capacity::NET_RULES),
            ("profile", self.profiles + 1, capacity::PROFILES),
        ]
        .into_iter()
        .find(|(_, n, cap)| *n > *cap as usize)
    }
}

/// The profiles the kernel enforces, by name.
#[derive(Default)]
pub struct Enforced {
    profiles: BTreeMap<String, Applied>,
    next_id: u32,
    usage: Usage,
}

impl Enforced {
    pub fn profiles(&self) -> impl Iterator<Item = &Applied> {
        self.profiles.values()
    }

    fn fresh_id(&mut self) -> u32 {
        // Ids are never reused while the daemon runs, so a stale id can only miss.
        self.next_id = self
            .next_id
            .checked_add(1)
            .expect("fewer than 2^32 profile versions");
        self.next_id
    }

    /// Makes the kernel enforce `candidates` (the valid profiles on disk). `failed` are files
    /// that failed to load: a profile applied from one of them stays in force. `problems`
    /// are those files' messages, passed through into the outcome.
    pub fn reconcile(
        &mut self,
        kernel: &mut impl KernelMaps,
        candidates: Vec<Accepted>,
        failed: &HashSet<PathBuf>,
        problems: Vec<String>,
    ) -> Outcome {
        let mut out = Outcome {
            problems,
            ..Outcome::default()
        };
        let wanted: HashSet<&str> = candidates.iter().map(|c| c.profile.name.as_str()).collect();

        // Who governs which cgroup once this reload is done, starting with the profiles that
        // stay as they are; new versions must not take a cgroup from them.
        let mut owner: HashMap<u64, String> = HashMap::new();
        let mut removals: Vec<String> = Vec::new();
        for (name, applied) in &self.profiles {
            let stays = if wanted.contains(name.as_str()) {
                candidates.iter().any(|c| applied.same_as(c))
            } else if failed.contains(&applied.profile.source) {
                out.kept.push(name.clone());
                true
            } else {
                removals.push(name.clone());
                false
            };
            if stays {
                for c in &applied.cgroups {
                    owner.insert(c.id, name.clone());
                }
            }
        }

        // Phase 1: write every new version under a fresh id (nothing points at it yet).
        let mut staged: Vec<Applied> = Vec::new();
        for candidate in candidates {
            let name = candidate.profile.name.clone();
            if self
                .profiles
                .get(&name)
                .is_some_and(|a| a.same_as(&candidate))
            {
                if let Err(e) =
                    self.retarget(kernel, &name, candidate.cgroups, candidate.pending, &owner)
                {
                    out.problems.push(format!(
                        "{}: profile {name}: {e}",
                        candidate.profile.source.display()
                    ));
                }
                out.unchanged.push(name);
                continue;
            }
            let source = candidate.profile.source.display().to_string();
            let had_previous = self.profiles.contains_key(&name);
            let keep_previous = |out: &mut Outcome, msg: String| {
                out.problems.push(msg);
                if had_previous {
                    out.kept.push(name.clone());
                }
            };
            if let Some((c, other)) = candidate
                .cgroups
                .iter()
                .find_map(|c| owner.get(&c.id).filter(|o| **o != name).map(|o| (c, o)))
            {
                let msg = format!(
                    "{source}: profile {name}: cgroup {} is already governed by profile {other}",
                    c.path
                );
                keep_previous(&mut out, msg);
                continue;
            }
            let id = self.fresh_id();
            let compiled = compile::compile(id, &candidate.profile);
            if let Some((map, n, cap)) = self.usage.overflow(&compiled) {
                let msg = format!(
                    "{source}: profile {name}: {map} map entries would total {n}, more than the kernel map holds ({cap})"
                );
                keep_previous(&mut out, msg);
                continue;
            }
            if let Err(e) = kernel.insert_profile(&compiled) {
                keep_previous(&mut out, format!("{source}: profile {name}: {e}"));
                continue;
            }
            self.usage.add(&compiled);
            for c in &candidate.cgroups {
                owner.insert(c.id, name.clone());
            }
            staged.push(Applied {
                profile: candidate.profile,
                cgroups: candidate.cgroups,
                pending: candidate.pending,
                compiled,
            });
        }

        // Phase 2: flip each staged profile's cgroups to its new id.
        let mut retired: Vec<Applied> = Vec::new();
        for new in staged {
            let name = new.profile.name.clone();
            let flips: Vec<(u64, u32)> = new.cgroups.iter().map(|c| (c.id, new.id())).collect();
            if let Err(e) = kernel
                .govern(&flips)
                .and_then(|()| kernel.pend(&new.pending, new.id()))
            {
                // Put back what the flip may have changed, then drop the new version.
                let old = self.profiles.get(&name);
                let restore: Vec<(u64, u32)> = old
                    .map(|o| o.cgroups.iter().map(|c| (c.id, o.id())).collect())
                    .unwrap_or_default();
                let _ = kernel.govern(&restore);
                if let Some(o) = old {
                    let _ = kernel.pend(&o.pending, o.id());
                }
                kernel.unpend(&stray_paths(&new.pending, old.map(|o| &o.pending[..])));
                let stray: Vec<u64> = new
                    .cgroups
                    .iter()
                    .map(|c| c.id)
                    .filter(|id| !restore.iter().any(|(r, _)| r == id))
                    .collect();
                let _ = kernel.ungovern(&stray);
                out.problems.push(format!(
                    "{}: profile {name}: {e}",
                    new.profile.source.display()
                ));
                if old.is_some() {
                    out.kept.push(name);
                }
                retired.push(new);
                continue;
            }
            match self.profiles.insert(name.clone(), new) {
                Some(old) => {
                    out.replaced.push(name);
                    retired.push(old);
                }
                None => out.added.push(name),
            }
        }
        for name in removals {
            if let Some(old) = self.profiles.remove(&name) {
                out.removed.push(name);
                retired.push(old);
            }
        }

        // Phase 3: release cgroups no profile governs any more.
        let governed: HashSet<u64> = self
            .profiles
            .values()
            .flat_map(|a| a.cgroups.iter().map(|c| c.id))
            .collect();
        let released: Vec<u64> = retired
            .iter()
            .flat_map(|a| a.cgroups.iter().map(|c| c.id))
            .filter(|id| !governed.contains(id))
            .collect();
        if let Err(e) = kernel.ungovern(&released) {
            out.problems.push(format!("releasing cgroups: {e}"));
        }
        let still_pending: HashSet<&String> =
            self.profiles.values().flat_map(|a| &a.pending).collect();
        let unpended: Vec<String> = retired
            .iter()
            .flat_map(|a| &a.pending)
            .filter(|p| !still_pending.contains(p))
            .cloned()
            .collect();
        kernel.unpend(&unpended);

        // Phase 4: once no program can still hold a retired id — including a cgroup_mkdir
        // run that bound a new cgroup to it — move such cgroups to the profile's current id
        // (or release them), and after another grace period delete the old rules.
        if !retired.is_empty() {
            kernel.synchronize();
            let mut moved = 0;
            for old in &retired {
                let to = self.profiles.get(&old.profile.name).map(Applied::id);
                match kernel.rebind(old.id(), to) {
                    Ok(n) => moved += n,
                    Err(e) => out.problems.push(format!("rebinding new cgroups: {e}")),
                }
            }
            if moved > 0 {
                kernel.synchronize();
            }
        }
        for old in &retired {
            kernel.remove_profile(&old.compiled);
            self.usage.remove(&old.compiled);
        }
        out.kept.sort();
        out.kept.dedup();
        out
    }

    /// Points an applied profile at a new set of cgroups and pending paths under the same id
    /// (a unit restarted, a pod came or went): governs the new ones, releases the gone ones.
    /// A cgroup another profile governs is left to it and reported.
    pub fn retarget(
        &mut self,
        kernel: &mut impl KernelMaps,
        name: &str,
        cgroups: Vec<GovernedCgroup>,
        pending: Vec<String>,
        owner: &HashMap<u64, String>,
    ) -> Result<(), String> {
        let Some(applied) = self.profiles.get(name) else {
            return Ok(());
        };
        if applied.cgroups == cgroups && applied.pending == pending {
            return Ok(());
        }
        let id = applied.id();
        let added: Vec<String> = stray_paths(&pending, Some(&applied.pending));
        let dropped: Vec<String> = stray_paths(&applied.pending, Some(&pending));
        kernel.pend(&added, id).map_err(|e| e.to_string())?;
        kernel.unpend(&dropped);
        let (mine, taken): (Vec<GovernedCgroup>, Vec<GovernedCgroup>) = cgroups
            .into_iter()
            .partition(|c| owner.get(&c.id).is_none_or(|o| o == name));
        let gone: Vec<u64> = applied
            .cgroups
            .iter()
            .map(|c| c.id)
            .filter(|id| !mine.iter().any(|c| c.id == *id))
            .collect();
        let flips: Vec<(u64, u32)> = mine
            .iter()
            .filter(|c| !applied.cgroups.contains(c))
            .map(|c| (c.id, id))
            .collect();
        kernel.govern(&flips).map_err(|e| e.to_string())?;
        kernel.ungovern(&gone).map_err(|e| e.to_string())?;
        if let Some(a) = self.profiles.get_mut(name) {
            a.cgroups = mine;
            a.pending = pending;
        }
        match taken.first() {
            Some(c) => Err(format!(
                "cgroup {} is already governed by profile {}",
                c.path,
                owner.get(&c.id).map_or("?", String::as_str)
            )),
            None => Ok(()),
        }
    }

    /// Who governs which cgroup now.
    pub fn owners(&self) -> HashMap<u64, String> {
        self.profiles
            .values()
            .flat_map(|a| a.cgroups.iter().map(|c| (c.id, a.profile.name.clone())))
            .collect()
    }
}

/// Paths pending for `new` that `old` did not have.
fn stray_paths(new: &[String], old: Option<&[String]>) -> Vec<String> {
    new.iter()
        .filter(|p| !old.is_some_and(|o| o.contains(p)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, collections::HashMap, path::Path};

    use super::*;
    use crate::profile;

    /// An in-memory kernel that checks the invariant after every step: every governed cgroup
    /// points at an id whose settings and rules are all present.
    #[derive(Default)]
    struct FakeKernel {
        profiles: HashMap<u32, CompiledProfile>,
        cgroups: HashMap<u64, u32>,
        pending: HashMap<String, u32>,
        /// Ids removed before a synchronize that followed their last use.
        synchronized: Cell<bool>,
        /// Refuse to write profiles with this many file rules ("map full").
        fail_insert_with_file_rules: Option<usize>,
        log: Vec<String>,
    }

    impl FakeKernel {
        fn check(&self) {
            for (cg, id) in &self.cgroups {
                assert!(
                    self.profiles.contains_key(id),
                    "cgroup {cg} points at missing profile {id}"
                );
            }
            for (path, id) in &self.pending {
                assert!(
                    *id == 0 || self.profiles.contains_key(id),
                    "pending {path} points at missing profile {id}"
                );
            }
        }
        fn rules_of(&self, cgroup: u64) -> Option<&CompiledProfile> {
            self.cgroups.get(&cgroup).map(|id| &self.profiles[id])
        }
    }

    impl KernelMaps for FakeKernel {
        fn insert_profile(&mut self, p: &CompiledProfile) -> Result<(), LoadError> {
            if self.fail_insert_with_file_rules == Some(p.file_rules.len()) {
                return Err(LoadError::Map {
                    map: "FILE_RULES",
                    error: "no space".into(),
                });
            }
            self.log.push(format!("insert {}", p.id));
            self.profiles.insert(p.id, p.clone());
            self.check();
            Ok(())
        }
        fn remove_profile(&mut self, p: &CompiledProfile) {
            assert!(
                self.synchronized.get(),
                "rules of {} removed without a grace period",
                p.id
            );
            assert!(
                !self.cgroups.values().any(|id| *id == p.id),
                "removing {} while in use",
                p.id
            );
            self.log.push(format!("remove {}", p.id));
            self.profiles.remove(&p.id);
        }
        fn govern(&mut self, cgroups: &[(u64, u32)]) -> Result<(), LoadError> {
            for (cg, id) in cgroups {
                self.cgroups.insert(*cg, *id);
                self.log.push(format!("govern {cg}->{id}"));
                self.synchronized.set(false);
                self.check();
            }
            Ok(())
        }
        fn ungovern(&mut self, cgroups: &[u64]) -> Result<(), LoadError> {
            for cg in cgroups {
                self.cgroups.remove(cg);
                self.log.push(format!("ungovern {cg}"));
                self.synchronized.set(false);
            }
            Ok(())
        }
        fn pend(&mut self, paths: &[String], id: u32) -> Result<(), LoadError> {
            for p in paths {
                self.pending.insert(p.clone(), id);
                self.log.push(format!("pend {p}->{id}"));
                self.synchronized.set(false);
                self.check();
            }
            Ok(())
        }
        fn unpend(&mut self, paths: &[String]) {
            for p in paths {
                self.pending.remove(p);
                self.log.push(format!("unpend {p}"));
                self.synchronized.set(false);
            }
        }
        fn rebind(&mut self, from: u32, to: Option<u32>) -> Result<usize, LoadError> {
            let hits: Vec<u64> = self
                .cgroups
                .iter()
                .filter(|(_, id)| **id == from)
                .map(|(cg, _)| *cg)
                .collect();
            for cg in &hits {
                match to {
                    Some(to) => self.cgroups.insert(*cg, to),
                    None => self.cgroups.remove(cg),
                };
                self.log.push(format!("rebind {cg}->{to:?}"));
                self.synchronized.set(false);
            }
            self.check();
            Ok(hits.len())
        }
        fn synchronize(&self) {
            self.synchronized.set(true);
        }
    }

    impl FakeKernel {
        /// What the `cgroup_mkdir` program does: a created cgroup at a pending path is
        /// governed with the pending id.
        fn mkdir(&mut self, path: &str, cgroup: u64) {
            if let Some(id) = self.pending.get(path) {
                self.cgroups.insert(cgroup, *id);
            }
        }
    }

    #[test]
    fn a_cgroup_bound_at_creation_follows_its_profile_to_the_new_version() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        let mut a = accepted("unit", "u.yaml", &["/a"], &[]);
        a.pending = vec!["/system.slice/x.service".into()];
        e.reconcile(&mut k, vec![a.clone()], &no_failures(), vec![]);
        let first = e.profiles().next().unwrap().id();
        assert_eq!(k.pending["/system.slice/x.service"], first);
        // The unit starts: the kernel binds its new cgroup before the daemon knows it.
        k.mkdir("/system.slice/x.service", 77);
        assert_eq!(k.cgroups[&77], first);
        // A new version is applied while the daemon still does not know cgroup 77: the
        // sweep after the grace period moves it, and the old rules go only then.
        let mut b = accepted("unit", "u.yaml", &["/a", "/b"], &[]);
        b.pending = a.pending.clone();
        let out = e.reconcile(&mut k, vec![b.clone()], &no_failures(), vec![]);
        assert_eq!(out.replaced, ["unit"]);
        let second = e.profiles().next().unwrap().id();
        assert_ne!(first, second);
        assert_eq!(k.cgroups[&77], second);
        assert_eq!(k.pending["/system.slice/x.service"], second);
        assert!(!k.profiles.contains_key(&first));
        // The daemon learns of the cgroup: retargeted under the same id, nothing rewritten.
        let mut c = b.clone();
        c.cgroups = vec![GovernedCgroup {
            path: "/system.slice/x.service".into(),
            id: 77,
        }];
        let before = k.log.len();
        let out = e.reconcile(&mut k, vec![c], &no_failures(), vec![]);
        assert_eq!(out.unchanged, ["unit"]);
        assert!(
            k.log[before..].iter().all(|l| !l.starts_with("insert")),
            "{:?}",
            &k.log[before..]
        );
        // The unit stops and its profile is deleted: nothing stays pending or governed.
        let out = e.reconcile(&mut k, vec![], &no_failures(), vec![]);
        assert_eq!(out.removed, ["unit"]);
        assert!(k.pending.is_empty() && k.cgroups.is_empty() && k.profiles.is_empty());
    }

    fn accepted(name: &str, file: &str, denied: &[&str], cgroups: &[u64]) -> Accepted {
        let rules: String = denied
            .iter()
            .map(|p| format!("      - {{path: {p}, access: [read], action: deny}}\n"))
            .collect();
        let text = format!(
            "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {{name: {name}, serial: 1}}\nspec:\n  selector: {{cgroup: /{name}}}\n  files:\n    default: allow\n    rules:\n{rules}"
        );
        Accepted {
            profile: profile::parse(Path::new(file), text.as_bytes()).unwrap(),
            cgroups: cgroups
                .iter()
                .map(|id| GovernedCgroup {
                    path: format!("/cg{id}"),
                    id: *id,
                })
                .collect(),
            pending: vec![],
        }
    }

    fn no_failures() -> HashSet<PathBuf> {
        HashSet::new()
    }

    #[test]
    fn first_load_writes_rules_before_governing() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        let out = e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10])],
            &no_failures(),
            vec![],
        );
        assert_eq!(out.added, ["web"]);
        assert_eq!(k.log, ["insert 1", "govern 10->1"]);
    }

    #[test]
    fn replacing_flips_cgroups_then_deletes_the_old_set_after_a_grace_period() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10, 11])],
            &no_failures(),
            vec![],
        );
        k.log.clear();
        let out = e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a", "/b"], &[10, 11])],
            &no_failures(),
            vec![],
        );
        assert_eq!(out.replaced, ["web"]);
        assert_eq!(
            k.log,
            ["insert 2", "govern 10->2", "govern 11->2", "remove 1"]
        );
        assert_eq!(k.rules_of(10).unwrap().id, 2);
        assert_eq!(k.profiles.len(), 1);
    }

    #[test]
    fn an_unchanged_profile_is_not_touched() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        let web = accepted("web", "/p/web.yaml", &["/a"], &[10]);
        e.reconcile(&mut k, vec![web.clone()], &no_failures(), vec![]);
        k.log.clear();
        let out = e.reconcile(&mut k, vec![web], &no_failures(), vec![]);
        assert_eq!(out.unchanged, ["web"]);
        assert!(k.log.is_empty(), "{:?}", k.log);
    }

    #[test]
    fn a_failed_file_keeps_its_previous_version_a_deleted_one_is_removed() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        e.reconcile(
            &mut k,
            vec![
                accepted("web", "/p/web.yaml", &["/a"], &[10]),
                accepted("db", "/p/db.yaml", &["/a"], &[20]),
            ],
            &no_failures(),
            vec![],
        );
        // web.yaml is now broken, db.yaml was deleted.
        let failed = HashSet::from([PathBuf::from("/p/web.yaml")]);
        let out = e.reconcile(&mut k, vec![], &failed, vec!["/p/web.yaml:3:1: bad".into()]);
        assert_eq!(out.kept, ["web"]);
        assert_eq!(out.removed, ["db"]);
        assert_eq!(out.problems, ["/p/web.yaml:3:1: bad"]);
        assert_eq!(k.rules_of(10).unwrap().id, 1);
        assert!(k.rules_of(20).is_none());
    }

    #[test]
    fn a_new_version_that_cannot_be_written_leaves_the_old_one_in_force() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10])],
            &no_failures(),
            vec![],
        );
        k.fail_insert_with_file_rules = Some(3);
        let out = e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a", "/b", "/c"], &[10])],
            &no_failures(),
            vec![],
        );
        assert_eq!(out.kept, ["web"]);
        assert!(
            out.problems[0].starts_with("/p/web.yaml: profile web: cannot write map FILE_RULES"),
            "{:?}",
            out.problems
        );
        assert_eq!(k.rules_of(10).unwrap().id, 1);
    }

    #[test]
    fn a_cgroup_moves_between_profiles_without_being_released() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10])],
            &no_failures(),
            vec![],
        );
        k.log.clear();
        // web.yaml deleted, api.yaml now selects cgroup 10.
        let out = e.reconcile(
            &mut k,
            vec![accepted("api", "/p/api.yaml", &["/a"], &[10])],
            &no_failures(),
            vec![],
        );
        assert_eq!(
            (out.added.as_slice(), out.removed.as_slice()),
            (&["api".to_string()][..], &["web".to_string()][..])
        );
        assert!(
            !k.log.iter().any(|l| l.starts_with("ungovern")),
            "{:?}",
            k.log
        );
        assert_eq!(k.rules_of(10).unwrap().id, 2);
    }

    #[test]
    fn a_new_profile_cannot_take_a_cgroup_from_a_kept_one() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10])],
            &no_failures(),
            vec![],
        );
        let failed = HashSet::from([PathBuf::from("/p/web.yaml")]);
        let out = e.reconcile(
            &mut k,
            vec![accepted("api", "/p/api.yaml", &["/a"], &[10])],
            &failed,
            vec![],
        );
        assert_eq!(
            out.problems,
            ["/p/api.yaml: profile api: cgroup /cg10 is already governed by profile web"]
        );
        assert_eq!(k.rules_of(10).unwrap().id, 1);
    }

    #[test]
    fn dropped_cgroups_are_released_without_rewriting_rules() {
        let mut k = FakeKernel::default();
        let mut e = Enforced::default();
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10, 11])],
            &no_failures(),
            vec![],
        );
        k.log.clear();
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10])],
            &no_failures(),
            vec![],
        );
        assert_eq!(k.log, ["ungovern 11"]);
        e.reconcile(
            &mut k,
            vec![accepted("web", "/p/web.yaml", &["/a"], &[10, 12])],
            &no_failures(),
            vec![],
        );
        assert_eq!(k.log, ["ungovern 11", "govern 12->1"]);
    }
}
