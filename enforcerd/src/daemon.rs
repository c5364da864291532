//! `enforcerd run`: preflight, profiles -> plan -> kernel, then report decisions until SIGTERM.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

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

/// Compiles accepted profiles; profile ids are 1, 2, ... in order.
pub fn plan(accepted: &[Accepted]) -> Plan {
    let mut plan = Plan {
        profiles: Vec::new(),
        cgroups: Vec::new(),
        catalog: HashMap::new(),
    };
    for (i, a) in accepted.iter().enumerate() {
        let id = u32::try_from(i + 1).expect("fewer than 2^32 profiles");
        plan.profiles.push(compile::compile(id, &a.profile));
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
    plan
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

    let (accepted, problems) = accept_profiles(&opts, &cgroupfs);
    for p in &problems {
        error!("refused {p}");
    }
    let plan = plan(&accepted);

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
