//! `vm-tests package --deb FILE`: boots a Debian 12 root filesystem (debootstrap, see
//! [`super::rootfs`]) with systemd as PID 1 and has `vm-guest package` install, exercise and
//! purge the .deb inside it (see `crate::guest::package`).
//!
//! The initramfs is two cpio archives back to back, which the kernel unpacks in turn into its
//! tmpfs root: the cached Debian tree, then a small overlay written with
//! [`super::initramfs::Archive`]: `/init` (announces the boot and execs systemd), the runner,
//! the .deb, the oneshot unit that runs the runner after multi-user.target and powers the VM
//! off, and masks for units that only add noise in a test VM. No disk, so no kernel modules.

use super::initramfs::{Archive, Node};
use super::report::{self, Failure, KernelReport};
use super::{Scratch, qemu, resolve_kernel, rootfs};
use crate::guest::package::{CHECKS, VM_GUEST};
use crate::protocol::Event;
use anyhow::{Context as _, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The Debian release the rootfs is built from (the kernel is Debian 12's too).
pub const SUITE: &str = "bookworm";

pub struct PackageOptions {
    pub deb: PathBuf,
    pub kernel: String,
    pub kernel_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub timeout: Duration,
    pub memory_mb: u32,
    pub mirror: String,
}

/// The test unit's name in the VM.
pub const TEST_UNIT: &str = "enforcerd-vm-test.service";

/// `/init`: the kernel has unpacked both archives; systemd takes over as PID 1.
const INIT: &str = "#!/bin/sh
# vm-tests package: the Debian rootfs and the test overlay are unpacked; systemd is PID 1.
echo \"@@INIT\"
exec /lib/systemd/systemd
";

/// Units masked in the VM: login prompts on the console the protocol uses, and timers that
/// would start maintenance jobs in the middle of the test.
const MASKED: &[&str] = &[
    "getty.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];

/// The oneshot unit that runs the checks once the system is up. Its output goes straight to
/// the serial console; `ExecStopPost` reports the runner's exit status and powers off without
/// the orderly shutdown (a clean shutdown of a tmpfs root gains nothing and was seen to hang).
/// `$$` is a literal `$` for the shell (systemd expands `$NAME` itself).
fn test_unit(deb_in_vm: &str) -> String {
    format!(
        "[Unit]
Description=enforcerd packaged-install test (vm-guest package)
After=multi-user.target

[Service]
Type=oneshot
ExecStart={VM_GUEST} package --deb {deb_in_vm}
ExecStopPost=/bin/sh -c 'case \"$$EXIT_STATUS\" in [0-9]*) s=$$EXIT_STATUS ;; *) s=255 ;; esac; sync; echo \"@@GUEST-EXIT $$s\" >/dev/ttyS0; systemctl --force --force poweroff'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"
    )
}

/// The overlay archive: everything the test adds to the Debian tree.
pub fn overlay(vm_guest: &Path, deb: &Path) -> Result<(Archive, String)> {
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .context("the .deb path has no UTF-8 file name")?;
    let deb_in_vm = format!("/root/packages/{deb_name}");
    let mut a = Archive::new();
    a.insert(
        "/init",
        Node::Bytes {
            data: INIT.as_bytes().to_vec(),
            mode: 0o755,
        },
    );
    a.insert(
        "/dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    a.insert(
        VM_GUEST,
        Node::File {
            source: vm_guest.to_owned(),
            mode: 0o755,
        },
    );
    a.insert(
        &deb_in_vm,
        Node::File {
            source: deb.to_owned(),
            mode: 0o644,
        },
    );
    let unit_path = format!("/etc/systemd/system/{TEST_UNIT}");
    a.insert(
        &unit_path,
        Node::Bytes {
            data: test_unit(&deb_in_vm).into_bytes(),
            mode: 0o644,
        },
    );
    a.insert(
        &format!("/etc/systemd/system/multi-user.target.wants/{TEST_UNIT}"),
        Node::Symlink { target: unit_path },
    );
    for unit in MASKED {
        a.insert(
            &format!("/etc/systemd/system/{unit}"),
            Node::Symlink {
                target: "/dev/null".into(),
            },
        );
    }
    Ok((a, deb_in_vm))
}

/// The package names the .deb depends on (`dpkg-deb -f DEB Depends`), so the rootfs has them
/// and `dpkg -i` alone can install it.
fn deb_depends(deb: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg("Depends")
        .output()
        .context("running dpkg-deb (package dpkg)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -f {} Depends: {}: {}",
            deb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(rootfs::depends_names(&String::from_utf8_lossy(&out.stdout)))
}

/// Appends `from` to `to`.
fn append(to: &mut std::fs::File, from: &Path) -> Result<()> {
    let mut f = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    std::io::copy(&mut f, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// Every check of [`CHECKS`] that `seen` lacks, as failures.
pub fn missing_checks(
    kernel: &str,
    seen: &BTreeMap<String, BTreeSet<String>>,
    why: &str,
) -> Vec<Failure> {
    let mut out = Vec::new();
    for (phase, checks) in CHECKS {
        for check in *checks {
            if !seen.get(*phase).is_some_and(|s| s.contains(*check)) {
                out.push(Failure {
                    kernel: kernel.to_owned(),
                    scenario: (*phase).to_owned(),
                    check: (*check).to_owned(),
                    expected: "the check reports a result".into(),
                    got: format!("never reported ({why})"),
                    detail: None,
                    context: vec![],
                    log_line: None,
                });
            }
        }
    }
    out
}

pub fn package(opts: &PackageOptions) -> Result<bool> {
    let started = Instant::now();
    if !opts.deb.is_file() {
        bail!(
            "{} not found (build it with tools/package)",
            opts.deb.display()
        );
    }
    let bins = super::locate_binaries(opts.bin_dir.as_deref(), false)?;
    let (name, kernel) = resolve_kernel(&opts.kernel, &opts.kernel_dir);
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;

    let depends = deb_depends(&opts.deb)?;
    let recipe = rootfs::Recipe::new(SUITE, &opts.mirror, &depends);
    let t = Instant::now();
    let base = rootfs::ensure(&recipe, &super::cache_dir().join("rootfs"))?;
    let rootfs_time = t.elapsed();

    let t = Instant::now();
    let scratch = Scratch::new()?;
    let (overlay, deb_in_vm) = overlay(&bins.guest, &opts.deb)?;
    let overlay_path = scratch.0.join("overlay.cpio");
    overlay
        .write_newc(std::io::BufWriter::new(
            std::fs::File::create(&overlay_path)
                .with_context(|| format!("creating {}", overlay_path.display()))?,
        ))
        .context("writing the overlay archive")?;
    let initrd = scratch.0.join("initrd.cpio");
    let mut out =
        std::fs::File::create(&initrd).with_context(|| format!("creating {}", initrd.display()))?;
    append(&mut out, &base)?;
    append(&mut out, &overlay_path)?;
    drop(out);
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    println!(
        "initramfs: {:.0} MB (Debian {SUITE} rootfs + vm-guest + {deb_in_vm}) in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let phases: Vec<&str> = CHECKS.iter().map(|(p, _)| *p).collect();
    let spec = qemu::VmSpec {
        name: name.clone(),
        kernel,
        initrd,
        append: vec![],
        timeout: opts.timeout,
        log_path: opts.log_dir.join(format!("package-{name}.log")),
        memory_mb: opts.memory_mb,
        qemu_args: vec![],
    };
    println!("booting {name} with systemd as init (software emulation: allow a few minutes)...");
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut progress = super::progress(&name);
    let mut report: KernelReport = qemu::run(&spec, &phases, |line, event, elapsed| {
        if let Some(Event::Result(r)) = event {
            seen.entry(r.scenario.clone())
                .or_default()
                .insert(r.check.clone());
        }
        progress(line, event, elapsed);
    });
    let why = match &report.end {
        report::VmEnd::Exited => "the runner did not run it".to_owned(),
        other => format!("the VM ended: {other:?}"),
    };
    report.failures.extend(missing_checks(&name, &seen, &why));

    println!();
    print!("{}", report::render_kernel(&report));
    print!("{}", report::render_summary(std::slice::from_ref(&report)));
    println!(
        "rootfs {:.1} s, total {:.1} s",
        rootfs_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(report.failed() == 0 && report.guest_exit == Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_runs_the_runner_after_boot_and_masks_noise() {
        let (a, deb) = overlay(
            Path::new("/x/vm-guest"),
            Path::new("/out/enforcerd_0.1.0-1_amd64.deb"),
        )
        .unwrap();
        assert_eq!(deb, "/root/packages/enforcerd_0.1.0-1_amd64.deb");
        let Some(Node::Bytes { data, mode: 0o644 }) =
            a.get("/etc/systemd/system/enforcerd-vm-test.service")
        else {
            panic!("no test unit")
        };
        let unit = String::from_utf8(data.clone()).unwrap();
        assert!(unit.contains(&format!(
            "ExecStart=/usr/local/bin/vm-guest package --deb {deb}\n"
        )));
        assert!(unit.contains("After=multi-user.target"));
        // The shell sees `$EXIT_STATUS`, not systemd's expansion of it.
        assert!(unit.contains("\"$$EXIT_STATUS\""));
        assert!(matches!(
            a.get("/etc/systemd/system/multi-user.target.wants/enforcerd-vm-test.service"),
            Some(Node::Symlink { .. })
        ));
        assert_eq!(
            a.get("/etc/systemd/system/getty.target"),
            Some(&Node::Symlink {
                target: "/dev/null".into()
            })
        );
        assert!(matches!(
            a.get("/init"),
            Some(Node::Bytes { mode: 0o755, .. })
        ));
        assert!(matches!(
            a.get("/usr/local/bin/vm-guest"),
            Some(Node::File { .. })
        ));
    }

    #[test]
    fn every_unreported_check_is_a_failure() {
        let mut seen = BTreeMap::new();
        let (phase, checks) = CHECKS[0];
        seen.insert(
            phase.to_owned(),
            checks[1..].iter().map(|c| (*c).to_owned()).collect(),
        );
        let missing = missing_checks("debian12", &seen, "test");
        let total: usize = CHECKS.iter().map(|(_, c)| c.len()).sum();
        assert_eq!(missing.len(), total - (checks.len() - 1));
        assert_eq!(missing[0].check, checks[0]);
    }
}
