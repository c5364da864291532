//! `enforcerd run`: preflight, profiles -> plan -> kernel, then report decisions until SIGTERM.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use enforcerd_common::capacity;
use futures::StreamExt as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::{
    compile::{self, CompiledProfile},
    events::{self, Catalog, ProfileMeta},
    exit,
    kernel::{Enforcer, btf::Offsets, preflight},
    paths,
    profile::{self, Profile},
    trust::{self, TrustPolicy},
    workload::{CgroupFs, GovernedCgroup},
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub profiles_dir: PathBuf,
    /// Global dry run: every profile in audit mode.
    pub audit: bool,
    pub trust: TrustPolicy,
    pub cgroup_root: PathBuf,
}

/// A profile that passed every check, with the cgroups it governs now.
pub struct Accepted {
    pub profile: Profile,
    pub cgroups: Vec<GovernedCgroup>,
}

/// Everything to write into the kernel, and what reports need to know about it.
pub struct Plan {
    pub profiles: Vec<CompiledProfile>,
    pub cgroups: Vec<(u64, u32)>,
    pub catalog: HashMap<u32, ProfileMeta>,
}

/// Reads, verifies, validates and resolves every profile in the directory. Problems are
/// returned as messages naming the file; they never stop the valid profiles.
pub fn accept_profiles(opts: &RunOptions, cgroupfs: &CgroupFs) -> (Vec<Accepted>, Vec<String>) {
    let (profiles, diagnostics) = profile::load_dir(&opts.profiles_dir);
    let mut problems: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut owner: HashMap<u64, String> = HashMap::new();
    for profile in profiles {
        if let Err(d) = trust::verify(&opts.trust, &profile.source) {
            problems.push(d.to_string());
            continue;
        }
        let profile = if opts.audit { profile.with_audit() } else { profile };
        let cgroups = match cgroupfs.resolve(&profile) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{}: profile {}: {e}", profile.source.display(), profile.name));
                continue;
            }
        };
        if let Some((c, other)) = cgroups.iter().find_map(|c| owner.get(&c.id).map(|o| (c, o))) {
            problems.push(format!(
                "{}: profile {}: cgroup {} is already governed by profile {other}",
                profile.source.display(),
                profile.name,
                c.path
            ));
            continue;
        }
        for c in &cgroups {
            owner.insert(c.id, profile.name.clone());
        }
        accepted.push(Accepted { profile, cgroups });
    }
    (accepted, problems)
}

/// Compiles accepted profiles; profile ids are 1, 2, ... in order. A profile whose entries
/// would not fit in the kernel maps next to the ones before it is refused (returned as a
/// problem) rather than half-applied.
pub fn plan(accepted: &[Accepted]) -> (Plan, Vec<String>) {
    let mut plan = Plan {
        profiles: Vec::new(),
        cgroups: Vec::new(),
        catalog: HashMap::new(),
    };
    let mut problems = Vec::new();
    let (mut exec, mut files, mut net, mut cgroups) = (0usize, 0usize, 0usize, 0usize);
    for a in accepted {
        let id = u32::try_from(plan.profiles.len() + 1).expect("fewer than 2^32 profiles");
        let compiled = compile::compile(id, &a.profile);
        let over = [
            ("exec", exec + compiled.exec_rules.len(), capacity::EXEC_RULES),
            ("file", files + compiled.file_rules.len(), capacity::FILE_RULES),
            ("connect", net + compiled.net_rules.len(), capacity::NET_RULES),
            ("cgroup", cgroups + a.cgroups.len(), capacity::CGROUP_PROFILES),
        ]
        .into_iter()
        .find(|(_, total, cap)| *total > *cap as usize);
        if let Some((kind, total, cap)) = over {
            problems.push(format!(
                "{}: profile {}: {kind} map entries would total {total}, more than the kernel map holds ({cap})",
                a.profile.source.display(),
                a.profile.name
            ));
            continue;
        }
        exec += compiled.exec_rules.len();
        files += compiled.file_rules.len();
        net += compiled.net_rules.len();
        cgroups += a.cgroups.len();
        plan.profiles.push(compiled);
        plan.cgroups.extend(a.cgroups.iter().map(|c| (c.id, id)));
        plan.catalog.insert(
            id,
            ProfileMeta {
                name: a.profile.name.clone(),
                serial: a.profile.serial,
                sha256: a.profile.sha256.clone(),
                mode: a.profile.mode.as_str(),
                cgroups: a.cgroups.iter().map(|c| c.path.clone()).collect(),
            },
        );
    }
    (plan, problems)
}

pub fn run(opts: RunOptions) -> u8 {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if let Err(e) = preflight::check(Path::new("/"), euid) {
        error!("{e}");
        return exit::CANNOT_ENFORCE;
    }
    let offsets = match Offsets::from_file(Path::new(paths::KERNEL_BTF)) {
        Ok(o) => o,
        Err(e) => {
            error!("{e}");
            return exit::CANNOT_ENFORCE;
        }
    };
    let cgroupfs = match CgroupFs::open(&opts.cgroup_root) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return exit::CANNOT_ENFORCE;
        }
    };
    if !opts.profiles_dir.is_dir() {
        error!("profiles directory {} does not exist", opts.profiles_dir.display());
        return exit::REFUSED;
    }
    if opts.trust == TrustPolicy::AllowUnsigned {
        warn!("--allow-unsigned: applying profiles WITHOUT signature verification (development only)");
    }

    let (mut accepted, mut problems) = accept_profiles(&opts, &cgroupfs);
    let (plan, too_big) = plan(&accepted);
    accepted.retain(|a| plan.catalog.values().any(|m| m.name == a.profile.name));
    problems.extend(too_big);
    for p in &problems {
        error!("refused {p}");
    }

    let mut enforcer = match Enforcer::load(&offsets) {
        Ok(e) => e,
        Err(e) => {
            error!("{e}");
            return exit::CANNOT_ENFORCE;
        }
    };
    if let Err(e) = enforcer.apply(&plan.profiles, &plan.cgroups) {
        error!("{e}");
        return exit::REFUSED;
    }
    if let Err(e) = enforcer.attach() {
        error!("{e}");
        return exit::CANNOT_ENFORCE;
    }
    for p in &enforcer.programs {
        info!(
            program = p.name,
            verified_instructions = p.verified_instructions,
            "attached"
        );
    }
    for a in &accepted {
        let cgroups: Vec<&str> = a.cgroups.iter().map(|c| c.path.as_str()).collect();
        info!(
            "enforcing profile {} (serial {}, {}, {}) on {}",
            a.profile.name,
            a.profile.serial,
            a.profile.mode.as_str(),
            a.profile.sha256,
            cgroups.join(", ")
        );
    }
    info!(
        "enforcing {} profile(s) on {} cgroup(s), {} refused; ready in {} ms",
        accepted.len(),
        plan.cgroups.len(),
        problems.len(),
        started.elapsed().as_millis()
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let catalog = Catalog {
        profiles: plan.catalog,
        cgroups: accepted
            .iter()
            .flat_map(|a| a.cgroups.iter().map(|c| (c.id, c.path.clone())))
            .collect(),
        cgroupfs: Some(cgroupfs),
    };
    let code = serve(&mut enforcer, catalog);
    drop(enforcer);
    info!("programs detached; exiting");
    code
}

/// Forwards decisions to stdout until SIGTERM or SIGINT.
fn serve(enforcer: &mut Enforcer, catalog: Catalog) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return exit::CANNOT_ENFORCE;
        }
    };
    let Some(ring) = enforcer.take_events() else {
        error!("the BPF object has no decision ring buffer");
        return exit::CANNOT_ENFORCE;
    };
    runtime.block_on(async move {
        let mut signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot install signal handlers: {e}");
                return exit::CANNOT_ENFORCE;
            }
        };
        let reader = tokio::spawn(events::forward(ring, catalog, std::io::stdout()));
        tokio::pin!(reader);
        loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    Some(SIGHUP) => warn!("SIGHUP: live reload is not supported by this version; restart enforcerd to apply profile changes"),
                    Some(s) => {
                        info!("signal {s}: detaching");
                        return exit::SUCCESS;
                    }
                    None => return exit::SUCCESS,
                },
                result = &mut reader => {
                    error!("decision reader stopped: {result:?}");
                    return exit::CANNOT_ENFORCE;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {name: NAME, serial: 1}\nspec:\n  selector: {cgroup: CGROUP}\n  files:\n    default: allow\n    rules:\n      - {path: /etc/shadow, access: [read], action: deny}\n";

    fn setup(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, RunOptions, CgroupFs) {
        let d = tempfile::tempdir().unwrap();
        let profiles = d.path().join("profiles");
        let cgroups = d.path().join("cgroup");
        std::fs::create_dir_all(&profiles).unwrap();
        std::fs::create_dir_all(cgroups.join("web")).unwrap();
        std::fs::create_dir_all(cgroups.join("db")).unwrap();
        for (file, name, cgroup) in files {
            let text = PROFILE.replace("NAME", name).replace("CGROUP", cgroup);
            std::fs::write(profiles.join(file), text).unwrap();
        }
        let opts = RunOptions {
            profiles_dir: profiles,
            audit: false,
            trust: TrustPolicy::AllowUnsigned,
            cgroup_root: cgroups.clone(),
        };
        (d, opts, CgroupFs { root: cgroups })
    }

    #[test]
    fn valid_profiles_are_accepted_next_to_refused_ones() {
        let (_d, opts, fs) = setup(&[
            ("a.yaml", "web", "/web"),
            ("b.yaml", "db", "/absent"),
            ("c.yaml", "other", "/web"),
            ("d.yaml", "db2", "/db"),
        ]);
        std::fs::write(opts.profiles_dir.join("e.yaml"), "apiVersion: enforcerd/v1\nkind: Nope\n").unwrap();
        let (accepted, problems) = accept_profiles(&opts, &fs);
        let names: Vec<&str> = accepted.iter().map(|a| a.profile.name.as_str()).collect();
        assert_eq!(names, ["web", "db2"]);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("b.yaml: profile db: cgroup /absent does not exist")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("c.yaml: profile other: cgroup /web is already governed by profile web")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("e.yaml:2:")), "{problems:#?}");
    }

    #[test]
    fn plan_numbers_profiles_from_one_and_maps_their_cgroups() {
        let (_d, opts, fs) = setup(&[("a.yaml", "web", "/web"), ("b.yaml", "db", "/db")]);
        let (accepted, _) = accept_profiles(&RunOptions { audit: true, ..opts }, &fs);
        let (plan, problems) = plan(&accepted);
        assert!(problems.is_empty());
        assert_eq!(plan.profiles.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(plan.cgroups, vec![(accepted[0].cgroups[0].id, 1), (accepted[1].cgroups[0].id, 2)]);
        // --audit reaches the kernel settings and the reports.
        assert!(plan.profiles.iter().all(|p| p.config.mode == enforcerd_common::mode::AUDIT));
        assert_eq!(plan.catalog[&1].mode, "audit");
        assert_eq!(plan.catalog[&2].name, "db");
    }

    #[test]
    fn unsigned_profiles_are_refused_without_allow_unsigned() {
        let (_d, opts, fs) = setup(&[("a.yaml", "web", "/web")]);
        let opts = RunOptions { trust: TrustPolicy::new(false, "/k".into()), ..opts };
        let (accepted, problems) = accept_profiles(&opts, &fs);
        assert!(accepted.is_empty());
        assert!(problems[0].contains("a.yaml: refused: "), "{problems:?}");
    }
}
