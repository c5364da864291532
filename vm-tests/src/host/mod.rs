//! The host side: builds the initramfs, boots the kernel matrix, reports.

pub mod bench;
pub mod initramfs;
pub mod qemu;
pub mod report;
pub mod rootfs;
pub mod systemd_vm;

use crate::catalog::{self, Scenario};
use crate::protocol::Event;
use anyhow::{Context as _, Result, bail};
use report::KernelReport;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The kernel matrix, in report order: Debian 12's kernel, trixie's and sid's newest.
pub const MATRIX: &[&str] = &["debian12", "debian13", "sid"];

pub const BUSYBOX: &str = "/bin/busybox";

/// The development cache: `${ENFORCERD_CACHE:-~/.cache/enforcerd-dev}`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ENFORCERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/enforcerd-dev")
        })
}

/// Where tools/setup caches the kernels: `${ENFORCERD_CACHE:-~/.cache/enforcerd-dev}/kernels`.
pub fn default_kernel_dir() -> PathBuf {
    cache_dir().join("kernels")
}

/// The directory holding the harness's own executable (`target/<profile>/`).
pub fn own_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the vm-tests executable")?;
    Ok(exe
        .parent()
        .context("executable without a directory")?
        .to_owned())
}

/// `target/vm-tests` for a harness at `target/<profile>/vm-tests`.
pub fn default_log_dir() -> PathBuf {
    own_dir()
        .ok()
        .and_then(|d| d.parent().map(|t| t.join("vm-tests")))
        .unwrap_or_else(|| PathBuf::from("target/vm-tests"))
}

/// A kernel by matrix name (`debian12`: `<dir>/debian12-vmlinuz`) or by path (named after
/// its file).
pub fn resolve_kernel(arg: &str, kernel_dir: &Path) -> (String, PathBuf) {
    if arg.contains('/') {
        let p = PathBuf::from(arg);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_owned());
        (name, p)
    } else {
        (arg.to_owned(), kernel_dir.join(format!("{arg}-vmlinuz")))
    }
}

pub struct Options {
    pub kernels: Vec<String>,
    pub scenarios: Vec<String>,
    pub bin_dir: Option<PathBuf>,
    pub kernel_dir: PathBuf,
    pub log_dir: PathBuf,
    pub timeout: Duration,
    pub jobs: usize,
    pub memory_mb: u32,
}

impl Options {
    /// The kernels asked for (the whole matrix when none was), as (name, image path).
    fn kernel_list(&self) -> Vec<(String, PathBuf)> {
        let names: Vec<&str> = if self.kernels.is_empty() {
            MATRIX.to_vec()
        } else {
            self.kernels.iter().map(String::as_str).collect()
        };
        names
            .into_iter()
            .map(|k| resolve_kernel(k, &self.kernel_dir))
            .collect()
    }
}

struct Binaries {
    guest: PathBuf,
    daemon: Option<PathBuf>,
    /// `enforcerd-previous`: the same daemon built with another BPF object, for the upgrade
    /// scenario (tools/dev builds it; the scenario fails without it).
    previous: Option<PathBuf>,
}

fn locate_binaries(bin_dir: Option<&Path>, daemon_needed: bool) -> Result<Binaries> {
    let dir = match bin_dir {
        Some(d) => d.to_owned(),
        None => own_dir()?,
    };
    let guest = dir.join("vm-guest");
    if !guest.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p vm-tests` (or pass --bin-dir)",
            guest.display()
        );
    }
    let daemon = dir.join("enforcerd");
    let daemon = if daemon.is_file() {
        Some(daemon)
    } else if daemon_needed {
        bail!(
            "{} not found: build it with `cargo build --release -p enforcerd` (or pass --bin-dir)",
            daemon.display()
        );
    } else {
        None
    };
    let previous = Some(dir.join("enforcerd-previous")).filter(|p| p.is_file());
    Ok(Binaries {
        guest,
        daemon,
        previous,
    })
}

/// A private scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("vm-tests-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The initramfs with `vm-guest`, the daemon binaries found, busybox and `extra` (host
/// file, name under /bin).
fn build_initramfs(
    bins: &Binaries,
    scratch: &Scratch,
    extra: Vec<(PathBuf, &'static str)>,
) -> Result<PathBuf> {
    let t = Instant::now();
    let out = scratch.0.join("initramfs.cpio.gz");
    let extra_names: Vec<&str> = extra.iter().map(|(_, n)| *n).collect();
    let mut binaries = vec![(bins.guest.clone(), "vm-guest")];
    binaries.extend(extra);
    if let Some(d) = &bins.daemon {
        binaries.push((d.clone(), "enforcerd"));
    }
    if let Some(p) = &bins.previous {
        binaries.push((p.clone(), "enforcerd-previous"));
    }
    initramfs::build(Path::new(BUSYBOX), binaries, &out).context("building the initramfs")?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "initramfs: {:.1} MB in {:.1} s (vm-guest, {}{}, busybox{})",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        if bins.daemon.is_some() {
            "enforcerd"
        } else {
            "no enforcerd"
        },
        if bins.previous.is_some() {
            ", enforcerd-previous"
        } else {
            ""
        },
        extra_names
            .iter()
            .map(|n| format!(", {n}"))
            .collect::<String>()
    );
    Ok(out)
}

/// `vm-tests test`: every selected scenario in one boot per kernel. Returns whether all passed.
pub fn test(opts: &Options) -> Result<bool> {
    let started = Instant::now();
    let selected: Vec<&Scenario> = catalog::select(&opts.scenarios).map_err(anyhow::Error::msg)?;
    let names: Vec<&str> = selected.iter().map(|s| s.name).collect();
    let bins = locate_binaries(
        opts.bin_dir.as_deref(),
        selected.iter().any(|s| s.needs_daemon),
    )?;
    let kernels = opts.kernel_list();
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let scratch = Scratch::new()?;
    let initrd = build_initramfs(&bins, &scratch, vec![])?;

    let mut append = vec!["enforcerd.mode=test".to_owned()];
    if !opts.scenarios.is_empty() {
        append.push(format!("enforcerd.scenarios={}", names.join(",")));
    }
    println!(
        "booting {} kernel(s), {} at a time: {}; scenarios: {}",
        kernels.len(),
        opts.jobs,
        kernels
            .iter()
            .map(|k| k.0.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        names.join(", ")
    );

    let queue = Mutex::new(kernels.iter().cloned().collect::<VecDeque<_>>());
    let results: Mutex<BTreeMap<String, KernelReport>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let Some((name, kernel)) = queue.lock().expect("queue").pop_front() else {
                        break;
                    };
                    let spec = qemu::VmSpec {
                        name: name.clone(),
                        kernel,
                        initrd: initrd.clone(),
                        append: append.clone(),
                        timeout: opts.timeout,
                        log_path: opts.log_dir.join(format!("{name}.log")),
                        memory_mb: opts.memory_mb,
                        qemu_args: vec![],
                    };
                    let report = qemu::run(&spec, &names, progress(&name));
                    println!(
                        "[{name}] finished in {:.1} s: {} passed, {} failed",
                        report.total_time.as_secs_f64(),
                        report.passed(),
                        report.failed()
                    );
                    results.lock().expect("results").insert(name, report);
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    let reports: Vec<KernelReport> = kernels
        .iter()
        .filter_map(|(n, _)| results.remove(n))
        .collect();

    println!();
    for r in &reports {
        print!("{}", report::render_kernel(r));
    }
    print!("{}", report::render_summary(&reports));
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    let failed: usize = reports.iter().map(KernelReport::failed).sum();
    Ok(failed == 0)
}

/// Prints one line per boot milestone and per finished scenario.
fn progress(name: &str) -> impl FnMut(&str, Option<&Event>, Duration) + '_ {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    move |_line, event, elapsed| match event {
        Some(Event::Init) => println!("[{name}] booted in {:.1} s", elapsed.as_secs_f64()),
        Some(Event::GuestStart(g)) => println!("[{name}] kernel {}", g.kernel),
        Some(Event::Result(r)) => {
            let c = counts.entry(r.scenario.clone()).or_default();
            if r.ok {
                c.0 += 1;
            } else {
                c.1 += 1;
                println!("[{name}] FAIL {}/{}", r.scenario, r.check);
            }
        }
        Some(Event::ScenarioEnd(s)) => {
            let (p, f) = counts.get(s).copied().unwrap_or_default();
            println!(
                "[{name}] {s}: {p} passed, {f} failed ({:.1} s)",
                elapsed.as_secs_f64()
            );
        }
        Some(Event::ScenarioSkip { scenario, reason }) => {
            println!("[{name}] {scenario}: skipped: {reason}")
        }
        _ => {}
    }
}

/// `vm-tests demo`: boots one kernel and shows the narrated walk-through live.
pub fn demo(opts: &Options) -> Result<bool> {
    let kernel = opts
        .kernels
        .first()
        .map(String::as_str)
        .unwrap_or("debian12");
    let (name, path) = resolve_kernel(kernel, &opts.kernel_dir);
    let bins = locate_binaries(opts.bin_dir.as_deref(), true)?;
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let scratch = Scratch::new()?;
    let initrd = build_initramfs(&bins, &scratch, vec![])?;
    let spec = qemu::VmSpec {
        name: name.clone(),
        kernel: path,
        initrd,
        append: vec!["enforcerd.mode=demo".to_owned()],
        timeout: opts.timeout,
        log_path: opts.log_dir.join(format!("demo-{name}.log")),
        memory_mb: opts.memory_mb,
        qemu_args: vec![],
    };
    println!("booting {name} under QEMU (software emulation: allow ~10 s)...\n");
    // Firmware chatter before /init starts stays in the log only.
    let mut booted = false;
    let report = qemu::run(&spec, &[], |line, event, elapsed| match event {
        Some(Event::Init) => {
            booted = true;
            println!("[booted in {:.1} s]", elapsed.as_secs_f64())
        }
        Some(_) => {}
        None if booted => println!("{line}"),
        None => {}
    });
    println!(
        "\n[VM {} after {:.1} s; serial log: {}]",
        match &report.end {
            report::VmEnd::Exited => "powered off".to_owned(),
            other => format!("stopped: {other:?}"),
        },
        report.total_time.as_secs_f64(),
        spec.log_path.display()
    );
    let ok = report.end == report::VmEnd::Exited && report.guest_exit == Some(0);
    if !ok {
        eprintln!("demo failed: guest exit status {:?}", report.guest_exit);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_by_name_or_path() {
        let dir = Path::new("/cache/kernels");
        assert_eq!(
            resolve_kernel("sid", dir),
            (
                "sid".to_owned(),
                PathBuf::from("/cache/kernels/sid-vmlinuz")
            )
        );
        assert_eq!(
            resolve_kernel("/boot/vmlinuz-6.1.0-56-amd64", dir),
            (
                "vmlinuz-6.1.0-56-amd64".to_owned(),
                PathBuf::from("/boot/vmlinuz-6.1.0-56-amd64")
            )
        );
    }
}
