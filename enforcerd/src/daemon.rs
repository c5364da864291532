//! `enforcerd run`: preflight, then profiles on disk -> kernel (at start, on SIGHUP and when
//! the profiles directory changes), decisions -> stdout, status -> control socket, until
//! SIGTERM. One task owns the loaded BPF object and the enforced state; everything else
//! (signals, directory changes, socket requests) reaches it through `select!`.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use enforcerd_common::{counter, hook};
use futures::StreamExt as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::{
    compile,
    control::{
        self, DecisionCounts, HookCounters, ProfileStatus, ProgramStatus, ReloadStatus, Request,
        Response, Status,
    },
    exit,
    kernel::{
        Enforcer,
        btf::Offsets,
        loader::{PROGRAMS, TRACEPOINTS},
        pins::{self, PinDir},
        preflight,
    },
    kubernetes::{self, Driver, Pods},
    metrics::{KernelHookCounts, KernelSnapshot, Metrics},
    paths, privileges,
    profile::{self, Diagnostic, Selector},
    reconcile::KernelMaps as _,
    reconcile::{Accepted, Enforced},
    report::{
        Catalog, K8s, ProfileMeta, Shared, journal,
        reader::{self, Sink},
    },
    trust::{SerialStore, TrustPolicy, Verifier},
    workload::{CgroupFs, Resolved},
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub profiles_dir: PathBuf,
    /// Global dry run: every profile in audit mode.
    pub audit: bool,
    pub trust: TrustPolicy,
    pub cgroup_root: PathBuf,
    /// Highest applied serial per profile name (rollback protection across restarts).
    pub serials_file: PathBuf,
    pub socket: PathBuf,
    /// Serve Prometheus metrics here (off when `None`).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Identical decisions closer together than this are folded into one summary line
    /// (zero: every decision is its own record).
    pub aggregation_window: Duration,
    /// Decision lines kept for `enforcerd events`.
    pub history: usize,
    pub decisions_to: DecisionsTo,
    /// What governs a pod cgroup that appears before its pod is known (Kubernetes nodes).
    pub node_default: NodeDefault,
    /// What SIGTERM does to the pinned programs.
    pub on_stop: OnStop,
    /// Where generations of programs, links and maps are pinned (see `kernel::pins`).
    pub pin_dir: PathBuf,
}

/// What stopping the daemon (SIGTERM, SIGINT, `systemctl stop`) does to enforcement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStop {
    /// The pinned programs keep enforcing the last applied profiles, unreported, until a new
    /// daemon takes over or `enforcerd detach` runs. A stop is then never a gap in
    /// enforcement, whoever asked for it.
    #[default]
    Keep,
    /// Unpin: enforcement stops with the daemon.
    Detach,
}

/// The node default: a built-in profile for pod cgroups whose pod the daemon does not know
/// yet (it started before the pod reached the watch, or the API server is slow). Released as
/// soon as the pod is known and matches no profile; replaced by the pod's profile when it
/// matches one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeDefault {
    /// Report every exec in such a pod (audit mode, nothing blocked).
    #[default]
    Audit,
    /// Deny every exec in such a pod until it is known.
    DenyExec,
    /// Leave such pods ungoverned until they are known.
    None,
}

impl NodeDefault {
    /// The built-in profile, or `None`.
    fn profile(self) -> Option<crate::profile::Profile> {
        let mode = match self {
            NodeDefault::Audit => "audit",
            NodeDefault::DenyExec => "enforce",
            NodeDefault::None => return None,
        };
        let text = format!(
            "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {{name: {NODE_DEFAULT_NAME}, serial: 1}}\n\
             spec:\n  selector: {{cgroup: /kubepods}}\n  mode: {mode}\n  onViolation: deny\n\
             \x20 exec: {{default: deny}}\n  files: {{default: allow}}\n\
             \x20 network: {{connect: {{default: allow}}}}\n"
        );
        profile::parse(Path::new("(built-in node default)"), text.as_bytes()).ok()
    }
}

/// Profile id of the node default (the ids of profiles from files count up from 1).
pub const NODE_DEFAULT_ID: u32 = u32::MAX;
pub const NODE_DEFAULT_NAME: &str = "node-default";

/// Where decision lines go (besides `enforcerd events` and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionsTo {
    /// The journal when started by systemd (stderr connected to the journal), else stdout.
    #[default]
    Auto,
    /// One JSON line per decision on stdout.
    Stdout,
    /// The systemd journal, with every field as a journal field.
    Journal,
    /// Nowhere but `enforcerd events` and metrics.
    None,
}

/// Default of `--aggregate-window`.
pub const DEFAULT_AGGREGATION_WINDOW: Duration = Duration::from_secs(1);
/// Default of `--history`.
pub const DEFAULT_HISTORY: usize = 1000;

impl RunOptions {
    /// The production locations for everything but what the command line chooses.
    pub fn new(profiles_dir: PathBuf, audit: bool, trust: TrustPolicy) -> Self {
        RunOptions {
            profiles_dir,
            audit,
            trust,
            cgroup_root: paths::CGROUP2_MOUNT.into(),
            serials_file: crate::trust::default_serials_path(),
            socket: paths::CONTROL_SOCKET.into(),
            metrics_address: None,
            aggregation_window: DEFAULT_AGGREGATION_WINDOW,
            history: DEFAULT_HISTORY,
            decisions_to: DecisionsTo::Auto,
            node_default: NodeDefault::Audit,
            on_stop: OnStop::Keep,
            pin_dir: paths::BPFFS_DIR.into(),
        }
    }
}

/// The profiles on disk, checked: what may be applied, and which files were refused why.
#[derive(Debug, Default)]
pub struct Scan {
    pub candidates: Vec<Accepted>,
    pub failed: HashSet<PathBuf>,
    pub problems: Vec<String>,
}

impl Scan {
    fn refuse(&mut self, file: &Path, message: String) {
        self.failed.insert(file.to_path_buf());
        self.problems.push(message);
    }
}

/// Reads every profile file once; verifies its signature over exactly the bytes read, then
/// parses those bytes, checks for rollback and duplicate names, and resolves its cgroups.
/// A problem with one file never stops the others.
pub fn scan(
    opts: &RunOptions,
    cgroupfs: &CgroupFs,
    serials: &SerialStore,
    pods: Option<&Pods>,
) -> Scan {
    let mut scan = Scan::default();
    let files = match profile::profile_files(&opts.profiles_dir) {
        Ok(f) => f,
        Err(e) => {
            // Nothing can be validated: every applied profile stays (its file is "failed").
            scan.problems
                .push(format!("{}: {e}", opts.profiles_dir.display()));
            return scan;
        }
    };
    let verifier = match Verifier::new(&opts.trust) {
        Ok(v) => Some(v),
        Err(d) => {
            scan.problems.push(d.to_string());
            None
        }
    };
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut owner: HashMap<u64, String> = HashMap::new();
    let mut pending_owner: HashMap<String, String> = HashMap::new();
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                scan.refuse(
                    &file,
                    Diagnostic::new(&file, None, e.to_string()).to_string(),
                );
                continue;
            }
        };
        let Some(verifier) = &verifier else {
            scan.failed.insert(file);
            continue;
        };
        if let Err(d) = verifier.verify(&file, &bytes) {
            scan.refuse(&file, d.to_string());
            continue;
        }
        let profile = match profile::parse(&file, &bytes) {
            Ok(p) => p,
            Err(d) => {
                scan.refuse(&file, d.to_string());
                continue;
            }
        };
        if let Some(first) = names.get(&profile.name) {
            scan.refuse(
                &file,
                profile::duplicate_name(first, &profile, &bytes).to_string(),
            );
            continue;
        }
        if let Err(msg) = serials.check(&profile.name, profile.serial) {
            scan.refuse(&file, format!("{}: {msg}", file.display()));
            continue;
        }
        let profile = if opts.audit {
            profile.with_audit()
        } else {
            profile
        };
        let resolved = match cgroupfs.resolve(&profile, pods) {
            Ok(r) => r,
            Err(e) => {
                scan.refuse(
                    &file,
                    format!("{}: profile {}: {e}", file.display(), profile.name),
                );
                continue;
            }
        };
        if let Some((path, other)) = resolved
            .pending
            .iter()
            .find_map(|p| pending_owner.get(p).map(|o| (p, o)))
        {
            let msg = format!(
                "{}: profile {}: cgroup {path} is already expected by profile {other}",
                file.display(),
                profile.name
            );
            scan.refuse(&file, msg);
            continue;
        }
        let cgroups = resolved.cgroups;
        if let Some((c, other)) = cgroups
            .iter()
            .find_map(|c| owner.get(&c.id).map(|o| (c, o)))
        {
            let msg = format!(
                "{}: profile {}: cgroup {} is already governed by profile {other}",
                file.display(),
                profile.name,
                c.path
            );
            scan.refuse(&file, msg);
            continue;
        }
        for c in &cgroups {
            owner.insert(c.id, profile.name.clone());
        }
        for p in &resolved.pending {
            pending_owner.insert(p.clone(), profile.name.clone());
        }
        names.insert(profile.name.clone(), file.clone());
        scan.candidates.push(Accepted {
            profile,
            cgroups,
            pending: resolved.pending,
        });
    }
    scan
}

struct Daemon {
    opts: RunOptions,
    cgroupfs: CgroupFs,
    serials: SerialStore,
    enforcer: Enforcer,
    /// This daemon's pinned generation (see `kernel::pins`).
    generation: PathBuf,
    enforced: Enforced,
    shared: Arc<Shared>,
    started: String,
    kernel: String,
    last_reload: Option<ReloadStatus>,
    /// Directories where expected cgroups appear (inotify), so the daemon's view follows.
    cgroup_watch: Option<CgroupWatch>,
    /// This node's pods (`None`: Kubernetes is not reachable; kubernetes selectors inactive).
    pods: Option<Pods>,
    /// Pod cgroup paths of known pods no profile selects (pending with id 0).
    known_pods: HashSet<String>,
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
        error!(
            "profiles directory {} does not exist",
            opts.profiles_dir.display()
        );
        return exit::REFUSED;
    }
    let serials = match SerialStore::open(&opts.serials_file) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return exit::REFUSED;
        }
    };
    let pins = match PinDir::open(&opts.pin_dir) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            return exit::CANNOT_ENFORCE;
        }
    };
    let metrics = opts.metrics_address.map(|_| Arc::new(Metrics::new()));
    let t_load = Instant::now();
    let enforcer = match Enforcer::load(&offsets, opts.aggregation_window) {
        Ok(e) => {
            info!(
                "BPF programs verified by the kernel in {} ms",
                t_load.elapsed().as_millis()
            );
            e
        }
        Err(e) => {
            error!("{e}");
            return exit::CANNOT_ENFORCE;
        }
    };
    let shared = Arc::new(Shared::new(opts.history, metrics));
    let mut daemon = Daemon {
        opts,
        cgroupfs,
        serials,
        enforcer,
        generation: PathBuf::new(),
        enforced: Enforced::default(),
        shared,
        started: now_rfc3339(),
        kernel: kernel_release(),
        last_reload: None,
        cgroup_watch: None,
        // Until the daemon knows whether Kubernetes answers (see `start_kubernetes`), a node
        // that names itself has an empty pod list, not "inactive", so kubernetes profiles are
        // applied (to no pod yet) rather than refused at start.
        pods: kubernetes::node_name().map(|_| Pods::default()),
        known_pods: HashSet::new(),
    };
    // The first reload fills the maps before the programs are attached, so their first
    // decision already sees every rule.
    daemon.reload("start");
    if let Err(e) = daemon.enforcer.attach() {
        error!("{e}");
        return exit::CANNOT_ENFORCE;
    }
    for p in &daemon.enforcer.programs {
        info!(
            program = p.name,
            verified_instructions = p.verified_instructions,
            "attached"
        );
    }
    // Before any thread exists: capabilities are per thread. Before pinning, too: a daemon
    // that cannot drop them exits with nothing of its own left attached.
    if let Err(e) = privileges::drop_to_runtime() {
        error!("{e}");
        return exit::CANNOT_ENFORCE;
    }
    match take_over(&pins, &mut daemon.enforcer) {
        Ok(generation) => daemon.generation = generation,
        Err(e) => {
            error!("{e}");
            return exit::CANNOT_ENFORCE;
        }
    }
    if let (Some(addr), Some(metrics)) = (daemon.opts.metrics_address, &daemon.shared.metrics) {
        match crate::metrics::serve(addr, metrics.clone()) {
            Ok(bound) => info!("serving metrics on http://{bound}/metrics"),
            Err(e) => {
                error!("cannot serve metrics on {addr}: {e}");
                return exit::REFUSED;
            }
        }
    }
    info!("enforcing; ready in {} ms", started.elapsed().as_millis());
    daemon.serve()
}

impl Daemon {
    /// Brings the kernel to the profiles on disk. Never leaves a governed cgroup ungoverned
    /// or half-updated (see `reconcile`).
    fn reload(&mut self, trigger: &str) {
        let t0 = Instant::now();
        if self.opts.trust == TrustPolicy::AllowUnsigned {
            warn!(
                "--allow-unsigned: applying profiles WITHOUT signature verification (development only)"
            );
        }
        let scan = scan(
            &self.opts,
            &self.cgroupfs,
            &self.serials,
            self.pods.as_ref(),
        );
        let mut out = self.enforced.reconcile(
            &mut self.enforcer,
            scan.candidates,
            &scan.failed,
            scan.problems,
        );
        let applied: Vec<(String, u64)> = self
            .enforced
            .profiles()
            .filter(|a| {
                out.added.contains(&a.profile.name) || out.replaced.contains(&a.profile.name)
            })
            .map(|a| (a.profile.name.clone(), a.profile.serial))
            .collect();
        if let Err(e) = self.serials.record(&applied) {
            out.problems.push(format!("recording applied serials: {e}"));
        }
        // Cgroups that appeared while the profiles were being written.
        self.refresh_cgroups();
        for p in &out.problems {
            error!("refused {p}");
        }
        if let Some(m) = &self.shared.metrics {
            m.reload();
            m.profiles_loaded(self.enforced.profiles().count() as u64);
            m.profile_errors(out.problems.len() as u64);
        }
        for k in &out.kept {
            warn!("profile {k}: its file was refused; the previous version stays in force");
        }
        for a in self.enforced.profiles() {
            if out.added.contains(&a.profile.name) || out.replaced.contains(&a.profile.name) {
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
        }
        for r in &out.removed {
            info!("profile {r} removed: its file is gone");
        }
        let took = t0.elapsed();
        info!(
            "reload ({trigger}) in {} ms: {} added, {} replaced, {} removed, {} unchanged, {} refused",
            took.as_millis(),
            out.added.len(),
            out.replaced.len(),
            out.removed.len(),
            out.unchanged.len(),
            out.problems.len()
        );
        self.last_reload = Some(ReloadStatus {
            at: now_rfc3339(),
            trigger: trigger.into(),
            duration_ms: took.as_millis() as u64,
            ok: out.problems.is_empty(),
            outcome: out,
        });
    }

    /// Re-resolves the profiles whose cgroups come and go (systemd units) and retargets them
    /// (the kernel already governs a cgroup created at a pending path; this keeps the daemon's
    /// view, reports and removals right). Then publishes the catalog for reports.
    fn refresh_cgroups(&mut self) {
        let owner = self.enforced.owners();
        let updates: Vec<(String, Resolved)> = self
            .enforced
            .profiles()
            .filter(|a| !matches!(a.profile.selector, Selector::Cgroup(_)))
            .filter_map(|a| {
                let r = self.cgroupfs.resolve(&a.profile, self.pods.as_ref()).ok()?;
                (r.cgroups != a.cgroups || r.pending != a.pending)
                    .then(|| (a.profile.name.clone(), r))
            })
            .collect();
        for (name, r) in updates {
            if let Err(e) =
                self.enforced
                    .retarget(&mut self.enforcer, &name, r.cgroups, r.pending, &owner)
            {
                warn!("profile {name}: {e}");
            }
        }
        self.mark_known_pods();
        if let Some(w) = &mut self.cgroup_watch {
            let expected = self
                .enforced
                .profiles()
                .flat_map(|a| a.pending.iter())
                .chain(self.known_pods.iter());
            for p in expected {
                w.watch_parent(&self.cgroupfs.root, p);
            }
        }
        // Keep the ids of replaced versions: their records may still be in flight.
        let mut catalog: Catalog = (*self.shared.catalog()).clone();
        catalog.k8s = self.pods.as_ref().map(k8s_paths).unwrap_or_default();
        for a in self.enforced.profiles() {
            catalog.profiles.insert(
                a.id(),
                ProfileMeta {
                    name: a.profile.name.clone(),
                    serial: a.profile.serial,
                    sha256: a.profile.sha256.clone(),
                    mode: a.profile.mode.as_str(),
                    cgroups: a.cgroups.iter().map(|c| c.path.clone()).collect(),
                },
            );
            for c in &a.cgroups {
                catalog.cgroups.insert(c.id, c.path.clone());
            }
        }
        self.shared.publish(catalog);
    }

    /// Pod cgroups of known pods that no profile selects are pending with id 0 ("known,
    /// leave alone"), which beats the node default's prefix entries in the kernel; one the
    /// node default bound before its pod was known is released.
    fn mark_known_pods(&mut self) {
        let Some(pods) = &self.pods else { return };
        let selected: HashSet<&String> = self
            .enforced
            .profiles()
            .flat_map(|a| a.pending.iter())
            .collect();
        // A pod a container-scoped profile selects stays under the node default until its
        // container's id (and so its cgroup) is known.
        let awaiting: HashSet<&String> = self
            .enforced
            .profiles()
            .filter_map(|a| match &a.profile.selector {
                Selector::Kubernetes {
                    namespace,
                    pod_labels,
                    container: Some(c),
                } => Some((namespace, pod_labels, c)),
                _ => None,
            })
            .flat_map(|(namespace, labels, c)| {
                pods.values().filter(move |pod| {
                    kubernetes::matches(namespace, labels, pod)
                        && kubernetes::container_cgroup(pod, c, Driver::Systemd).is_none()
                })
            })
            .map(|pod| &pod.uid)
            .collect();
        let known: HashSet<String> = pods
            .values()
            .filter(|pod| !awaiting.contains(&pod.uid))
            .flat_map(|pod| Driver::ALL.map(|d| kubernetes::pod_cgroup(pod, d)))
            .filter(|p| !selected.contains(p))
            .collect();
        let added: Vec<String> = known.difference(&self.known_pods).cloned().collect();
        let gone: Vec<String> = self
            .known_pods
            .difference(&known)
            .filter(|p| !selected.contains(p))
            .cloned()
            .collect();
        if let Err(e) = self.enforcer.pend(&added, 0) {
            warn!("marking known pods: {e}");
        }
        self.enforcer.unpend(&gone);
        let existing: Vec<u64> = known
            .iter()
            .filter_map(|p| self.cgroupfs.cgroup(p).ok())
            .map(|c| c.id)
            .collect();
        if let Err(e) = self.enforcer.release_from(&existing, NODE_DEFAULT_ID) {
            warn!("releasing pods from the node default: {e}");
        }
        self.known_pods = known;
    }

    /// Installs the node default (Kubernetes nodes): its built-in profile under
    /// `NODE_DEFAULT_ID`, bound by the kernel to every new pod-level cgroup (either cgroup
    /// driver) whose pod is not known yet.
    fn install_node_default(&mut self) {
        let Some(profile) = self.opts.node_default.profile() else {
            return;
        };
        let compiled = compile::compile(NODE_DEFAULT_ID, &profile);
        let prefixes: Vec<(String, u32)> = Driver::ALL
            .into_iter()
            .flat_map(kubernetes::pod_cgroup_prefixes)
            .collect();
        let installed = self
            .enforcer
            .insert_profile(&compiled)
            .and_then(|()| self.enforcer.pend_prefixes(&prefixes, NODE_DEFAULT_ID));
        match installed {
            Ok(()) => {
                let mut catalog: Catalog = (*self.shared.catalog()).clone();
                catalog.profiles.insert(
                    NODE_DEFAULT_ID,
                    ProfileMeta {
                        name: NODE_DEFAULT_NAME.into(),
                        serial: 1,
                        sha256: profile.sha256.clone(),
                        mode: profile.mode.as_str(),
                        cgroups: vec![],
                    },
                );
                self.shared.publish(catalog);
                info!(
                    "node default: {} execs in pods not known yet",
                    if profile.mode.as_str() == "audit" {
                        "auditing"
                    } else {
                        "denying"
                    }
                );
            }
            Err(e) => error!("cannot install the node default: {e}"),
        }
    }

    fn status(&self) -> Status {
        let decisions = self.shared.decisions();
        let hooks = self
            .kernel_counts()
            .into_iter()
            .map(|(h, name, c)| HookCounters {
                hook: name.into(),
                allowed: c.allowed,
                denied: c.denied,
                killed: c.killed,
                audited: c.audited,
                dropped: c.dropped,
                aggregated: c.aggregated,
                reported: self.shared.reported(h),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started: self.started.clone(),
            kernel: self.kernel.clone(),
            programs: self
                .enforcer
                .programs
                .iter()
                .map(|p| ProgramStatus {
                    name: p.name.into(),
                    hook: PROGRAMS
                        .iter()
                        .find(|(n, _)| *n == p.name)
                        .map(|(_, h)| h.to_string())
                        .or_else(|| {
                            TRACEPOINTS
                                .iter()
                                .find(|(n, _)| *n == p.name)
                                .map(|(_, t)| format!("tracepoint/{t}"))
                        })
                        .unwrap_or_default(),
                    attached: self.enforcer.attached(),
                    verified_instructions: p.verified_instructions,
                })
                .collect(),
            pinned_in: self.generation.display().to_string(),
            on_stop: match self.opts.on_stop {
                OnStop::Keep => "keep",
                OnStop::Detach => "detach",
            }
            .into(),
            profiles_dir: self.opts.profiles_dir.display().to_string(),
            unsigned_allowed: self.opts.trust == TrustPolicy::AllowUnsigned,
            audit_all: self.opts.audit,
            last_reload: self.last_reload.clone(),
            profiles: self
                .enforced
                .profiles()
                .map(|a| ProfileStatus {
                    name: a.profile.name.clone(),
                    serial: a.profile.serial,
                    sha256: a.profile.sha256.clone(),
                    mode: a.profile.mode.as_str().into(),
                    on_violation: a.profile.on_violation.as_str().into(),
                    source: a.profile.source.display().to_string(),
                    cgroups: a.cgroups.iter().map(|c| c.path.clone()).collect(),
                    pending: a.pending.clone(),
                    decisions: decisions
                        .get(&a.profile.name)
                        .copied()
                        .unwrap_or(DecisionCounts::default()),
                })
                .collect(),
            hooks,
        }
    }

    /// The kernel's per-hook counters (summed over CPUs), for `status` and metrics.
    fn kernel_counts(&self) -> Vec<(u8, &'static str, KernelHookCounts)> {
        [
            (hook::EXEC, "exec"),
            (hook::FILE, "file"),
            (hook::CONNECT, "connect"),
        ]
        .into_iter()
        .map(|(h, name)| {
            let count = |kind| self.enforcer.counter(h, kind);
            let counts = KernelHookCounts {
                allowed: count(counter::ALLOWED),
                denied: count(counter::DENIED),
                killed: count(counter::KILLED),
                audited: count(counter::AUDITED),
                dropped: count(counter::DROPPED),
                aggregated: count(counter::AGGREGATED),
            };
            (h, name, counts)
        })
        .collect()
    }

    fn publish_kernel_metrics(&self) {
        let Some(m) = &self.shared.metrics else {
            return;
        };
        let hooks = self
            .kernel_counts()
            .into_iter()
            .map(|(_, name, c)| (name, c))
            .collect();
        m.kernel(&KernelSnapshot {
            hooks,
            ringbuf_used_bytes: self.enforcer.ring_used().unwrap_or(0),
            ringbuf_size_bytes: u64::from(enforcerd_common::capacity::EVENTS_BYTES),
        });
    }

    /// Connects to Kubernetes when this node has access (in a pod, or a kubeconfig) and
    /// `NODE_NAME` is set: installs the node default, starts watching this node's pods and
    /// waits (up to 10 s) for the first list, so pods running now are governed before the
    /// daemon says it is ready. Otherwise says once that kubernetes selectors are inactive.
    async fn start_kubernetes(&mut self) -> Option<tokio::sync::watch::Receiver<Pods>> {
        let why = match (kubernetes::client().await, kubernetes::node_name()) {
            (Ok(Some(client)), Some(node)) => Ok((client, node)),
            (Ok(None), _) => Err("not in a pod and no kubeconfig".to_string()),
            (Err(e), _) => Err(e.to_string()),
            (Ok(Some(_)), None) => {
                Err("NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)".into())
            }
        };
        let (client, node) = match why {
            Ok(found) => found,
            Err(why) => {
                info!("Kubernetes selectors are inactive: {why}");
                if self.pods.take().is_some() {
                    self.reload("Kubernetes inactive");
                }
                return None;
            }
        };
        self.install_node_default();
        let (tx, mut rx) = tokio::sync::watch::channel(Pods::default());
        tokio::spawn(kubernetes::watch_pods(client, node.clone(), tx));
        match tokio::time::timeout(Duration::from_secs(10), rx.changed()).await {
            Ok(Ok(())) => {
                let pods = rx.borrow_and_update().clone();
                info!("watching the {} pods of node {node}", pods.len());
                self.pods = Some(pods);
                // Profiles with kubernetes selectors were refused before the list came.
                self.reload("Kubernetes pods listed");
            }
            _ => {
                warn!(
                    "no pod list from the API server within 10 s; pods are governed once it answers"
                );
                self.pods = Some(Pods::default());
            }
        }
        Some(rx)
    }

    /// Runs until SIGTERM or SIGINT; returns the exit code.
    fn serve(mut self) -> u8 {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                error!("cannot start the runtime: {e}");
                return exit::CANNOT_ENFORCE;
            }
        };
        let reporting = match self.enforcer.take_reporting() {
            Ok(r) => r,
            Err(e) => {
                error!("{e}");
                return exit::CANNOT_ENFORCE;
            }
        };
        let sink = match decision_sink(self.opts.decisions_to) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot open the journal for decisions: {e}");
                return exit::CANNOT_ENFORCE;
            }
        };
        let code = runtime.block_on(async {
            let mut signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
                Ok(s) => s,
                Err(e) => {
                    error!("cannot install signal handlers: {e}");
                    return exit::CANNOT_ENFORCE;
                }
            };
            let listener = match control::bind(&self.opts.socket) {
                Ok(l) => l,
                Err(e) => {
                    error!(
                        "cannot create the control socket {}: {e}",
                        self.opts.socket.display()
                    );
                    return exit::CANNOT_ENFORCE;
                }
            };
            // (inotify streams need the runtime.)
            self.cgroup_watch = match CgroupWatch::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(
                        "cannot watch the cgroup hierarchy ({e}); cgroups created at expected \
                         paths are still governed by the kernel; `status` catches up at reloads"
                    );
                    None
                }
            };
            let mut pods = self.start_kubernetes().await;
            self.refresh_cgroups();
            let mut changes = match watch(&self.opts.profiles_dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(
                        "cannot watch {} ({e}); reload with SIGHUP",
                        self.opts.profiles_dir.display()
                    );
                    None
                }
            };
            // Decisions are forwarded on their own thread: a flood of denials (a workload
            // hammering a denied file) must not delay reloads, signals or status requests.
            let (reader_done, reader) = tokio::sync::oneshot::channel();
            let shared = self.shared.clone();
            let cgroupfs = CgroupFs {
                root: self.cgroupfs.root.clone(),
            };
            let window = self.opts.aggregation_window;
            let spawned = std::thread::Builder::new()
                .name("decisions".into())
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|rt| {
                            rt.block_on(reader::forward(
                                reporting,
                                shared,
                                Some(cgroupfs),
                                sink,
                                window,
                            ))
                        });
                    let _ = reader_done.send(result);
                });
            if let Err(e) = spawned {
                error!("cannot start the decision reader: {e}");
                return exit::CANNOT_ENFORCE;
            }
            tokio::pin!(reader);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            loop {
                tokio::select! {
                    signal = signals.next() => match signal {
                        Some(SIGHUP) => self.reload("SIGHUP"),
                        Some(s) => {
                            info!("signal {s}: stopping");
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                            return exit::SUCCESS;
                        }
                        None => return exit::SUCCESS,
                    },
                    Some(_) = next_change(&mut changes) => {
                        settle(changes.as_mut()).await;
                        self.reload("profiles directory changed");
                    }
                    Some(_) = next_cgroup_change(&mut self.cgroup_watch) => {
                        self.refresh_cgroups();
                    }
                    Some(snapshot) = next_pods(&mut pods) => {
                        self.pods = Some(snapshot);
                        self.refresh_cgroups();
                    }
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        match control::read_request(stream).await {
                            Some((Request::Status, mut write)) => {
                                let status = Response::Status(Box::new(self.status()));
                                control::respond(&mut write, &status).await;
                            }
                            Some((Request::Events { follow }, write)) => {
                                let (history, live) = self.shared.hub.snapshot(follow);
                                tokio::spawn(control::stream_events(write, history, live));
                            }
                            None => {}
                        }
                    }
                    _ = tick.tick() => self.publish_kernel_metrics(),
                    result = &mut reader => {
                        error!("decision reader stopped: {result:?}");
                        return exit::CANNOT_ENFORCE;
                    }
                }
            }
        });
        let _ = std::fs::remove_file(&self.opts.socket);
        match self.opts.on_stop {
            OnStop::Detach => match pins::retire(&self.generation) {
                Ok(()) => info!("unpinned; programs detached; exiting"),
                Err(e) => error!(
                    "cannot unpin {}: {e}; the programs keep enforcing (`enforcerd detach` \
                     removes them)",
                    self.generation.display()
                ),
            },
            OnStop::Keep => info!(
                "the programs stay pinned in {} and keep enforcing the last applied profiles \
                 (on stop: keep); a new daemon takes over, `enforcerd detach` stops them",
                self.generation.display()
            ),
        }
        drop(self.enforcer);
        code
    }
}

/// Pins the freshly attached `enforcer` as a new generation, then retires the older ones:
/// until then both are attached, so the handover is an overlap (see `kernel::pins`). On a
/// pinning error the partial generation is removed and the older ones stay in force.
fn take_over(pins: &PinDir, enforcer: &mut Enforcer) -> Result<PathBuf, String> {
    let older = pins.generations().map_err(|e| e.to_string())?;
    let object = Enforcer::object_sha256();
    let generation = pins.new_generation(&object).map_err(|e| e.to_string())?;
    if let Err(e) = enforcer.pin(&generation) {
        let _ = pins::retire(&generation);
        return Err(format!(
            "{e}; {} older generation(s) stay in force",
            older.len()
        ));
    }
    info!("pinned in {}", generation.display());
    for old in older {
        let name = old.file_name().map(|n| n.to_string_lossy().into_owned());
        let same = name.as_deref().is_some_and(|n| n.ends_with(&object[..12]));
        match pins::retire(&old) {
            Ok(()) => info!(
                "took over from the pinned generation {} ({}); unpinned, so the kernel detaches it",
                old.display(),
                if same {
                    "same BPF object"
                } else {
                    "a different BPF object: upgraded"
                }
            ),
            // Both stay attached: stricter than either alone; the next start retries.
            Err(e) => warn!("cannot retire the pinned generation {}: {e}", old.display()),
        }
    }
    Ok(generation)
}

/// Every pod and container cgroup path (both drivers) of `pods`, with its identity.
fn k8s_paths(pods: &Pods) -> HashMap<String, K8s> {
    let mut paths = HashMap::new();
    for pod in pods.values() {
        let id = |container: Option<&str>| K8s {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container: container.map(str::to_owned),
        };
        for driver in Driver::ALL {
            paths.insert(kubernetes::pod_cgroup(pod, driver), id(None));
            for c in &pod.containers {
                if let Some(path) = kubernetes::container_cgroup(pod, &c.name, driver) {
                    paths.insert(path, id(Some(&c.name)));
                }
            }
        }
    }
    paths
}

fn decision_sink(to: DecisionsTo) -> std::io::Result<Sink> {
    let journal = match to {
        DecisionsTo::Auto => journal::connected(),
        DecisionsTo::Journal => true,
        DecisionsTo::Stdout | DecisionsTo::None => false,
    };
    Ok(if journal {
        Sink::Journal(journal::Journal::open()?)
    } else if to == DecisionsTo::None {
        Sink::Lines(Box::new(std::io::sink()))
    } else {
        Sink::Lines(Box::new(std::io::stdout()))
    })
}

type Changes = inotify::EventStream<Vec<u8>>;

/// inotify on the cgroup2 directories where expected cgroups appear and go (mkdir/rmdir by
/// systemd or a container runtime). The kernel binds such cgroups by itself; this only keeps
/// the daemon's view current. Watches are added as profiles expect new places, never removed
/// (a watch on a directory that goes away ends by itself).
struct CgroupWatch {
    stream: Changes,
    watched: HashSet<PathBuf>,
}

impl CgroupWatch {
    fn new() -> std::io::Result<Self> {
        let inotify = inotify::Inotify::init()?;
        Ok(CgroupWatch {
            stream: inotify.into_event_stream(vec![0u8; 4096])?,
            watched: HashSet::new(),
        })
    }

    /// Watches the directory where `path` (below the cgroup2 mount) appears, if it exists.
    fn watch_parent(&mut self, root: &Path, path: &str) {
        use inotify::WatchMask;
        let Some(parent) = Path::new(path.trim_start_matches('/')).parent() else {
            return;
        };
        let dir = root.join(parent);
        if self.watched.contains(&dir) || !dir.is_dir() {
            return;
        }
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::ONLYDIR;
        match self.stream.watches().add(&dir, mask) {
            Ok(_) => {
                self.watched.insert(dir);
            }
            Err(e) => warn!("cannot watch {}: {e}", dir.display()),
        }
    }
}

async fn next_pods(pods: &mut Option<tokio::sync::watch::Receiver<Pods>>) -> Option<Pods> {
    match pods {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn next_cgroup_change(watch: &mut Option<CgroupWatch>) -> Option<()> {
    match watch {
        Some(w) => w.stream.next().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Events about files appearing, changing or leaving the profiles directory.
fn watch(dir: &Path) -> std::io::Result<Changes> {
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::CREATE
            | WatchMask::ATTRIB,
    )?;
    inotify.into_event_stream(vec![0u8; 4096])
}

async fn next_change(changes: &mut Option<Changes>) -> Option<()> {
    match changes {
        Some(s) => s.next().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Debounce: an editor or `cp` writes a profile and its signature as several events; wait
/// until the directory has been quiet for 100 ms (at most 1 s) before reloading once.
async fn settle(changes: Option<&mut Changes>) {
    let Some(changes) = changes else { return };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(_)) = tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
        changes.next(),
    )
    .await
    {}
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {name: NAME, serial: SERIAL}\nspec:\n  selector: {cgroup: CGROUP}\n  files:\n    default: allow\n    rules:\n      - {path: /etc/shadow, access: [read], action: deny}\n";

    fn profile_text(name: &str, cgroup: &str, serial: u64) -> String {
        PROFILE
            .replace("NAME", name)
            .replace("CGROUP", cgroup)
            .replace("SERIAL", &serial.to_string())
    }

    fn setup(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, RunOptions, CgroupFs) {
        let d = tempfile::tempdir().unwrap();
        let profiles = d.path().join("profiles");
        let cgroups = d.path().join("cgroup");
        std::fs::create_dir_all(&profiles).unwrap();
        std::fs::create_dir_all(cgroups.join("web")).unwrap();
        std::fs::create_dir_all(cgroups.join("db")).unwrap();
        for (file, name, cgroup) in files {
            std::fs::write(profiles.join(file), profile_text(name, cgroup, 1)).unwrap();
        }
        let opts = RunOptions {
            profiles_dir: profiles,
            audit: false,
            trust: TrustPolicy::AllowUnsigned,
            cgroup_root: cgroups.clone(),
            serials_file: d.path().join("state/serials.json"),
            socket: d.path().join("run/enforcerd.sock"),
            ..RunOptions::new(PathBuf::new(), false, TrustPolicy::AllowUnsigned)
        };
        (d, opts, CgroupFs { root: cgroups })
    }

    fn names(scan: &Scan) -> Vec<&str> {
        scan.candidates
            .iter()
            .map(|a| a.profile.name.as_str())
            .collect()
    }

    #[test]
    fn valid_profiles_are_accepted_next_to_refused_ones() {
        let (_d, opts, fs) = setup(&[
            ("a.yaml", "web", "/web"),
            ("b.yaml", "db", "/absent"),
            ("c.yaml", "other", "/web"),
            ("d.yaml", "db2", "/db"),
        ]);
        std::fs::write(
            opts.profiles_dir.join("e.yaml"),
            "apiVersion: enforcerd/v1\nkind: Nope\n",
        )
        .unwrap();
        let s = scan(
            &opts,
            &fs,
            &SerialStore::open(&opts.serials_file).unwrap(),
            None,
        );
        assert_eq!(names(&s), ["web", "db2"]);
        let p = &s.problems;
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p.iter()
                .any(|p| p.contains("b.yaml: profile db: cgroup /absent does not exist")),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|p| p
                .contains("c.yaml: profile other: cgroup /web is already governed by profile web")),
            "{p:#?}"
        );
        assert!(p.iter().any(|p| p.contains("e.yaml:2:")), "{p:#?}");
        let failed: HashSet<PathBuf> = ["b.yaml", "c.yaml", "e.yaml"]
            .iter()
            .map(|f| opts.profiles_dir.join(f))
            .collect();
        assert_eq!(s.failed, failed);
    }

    #[test]
    fn rolled_back_serials_are_refused() {
        let (_d, opts, fs) = setup(&[]);
        std::fs::write(
            opts.profiles_dir.join("web.yaml"),
            profile_text("web", "/web", 2),
        )
        .unwrap();
        let mut serials = SerialStore::open(&opts.serials_file).unwrap();
        serials.record(&[("web".into(), 5)]).unwrap();
        let s = scan(&opts, &fs, &serials, None);
        assert!(s.candidates.is_empty());
        assert_eq!(
            s.problems,
            [format!(
                "{}: rolled back: serial 2 is lower than serial 5 already applied for profile web",
                opts.profiles_dir.join("web.yaml").display()
            )]
        );
    }

    #[test]
    fn audit_flag_reaches_every_profile() {
        let (_d, opts, fs) = setup(&[("a.yaml", "web", "/web")]);
        let s = scan(
            &RunOptions {
                audit: true,
                ..opts.clone()
            },
            &fs,
            &SerialStore::open(&opts.serials_file).unwrap(),
            None,
        );
        assert_eq!(s.candidates[0].profile.mode, crate::profile::Mode::Audit);
    }

    #[test]
    fn unsigned_profiles_are_refused_without_allow_unsigned() {
        let (d, opts, fs) = setup(&[("a.yaml", "web", "/web")]);
        let keys = d.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let opts = RunOptions {
            trust: TrustPolicy::new(false, keys),
            ..opts
        };
        let s = scan(
            &opts,
            &fs,
            &SerialStore::open(&opts.serials_file).unwrap(),
            None,
        );
        assert!(s.candidates.is_empty());
        assert!(
            s.problems[0].contains("missing signature"),
            "{:?}",
            s.problems
        );
    }
}
