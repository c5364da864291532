//! A Debian root filesystem built with debootstrap from Debian's own packages, for the VM that
//! boots real systemd (`vm-tests package`).
//!
//! The tree is trimmed (documentation, manual pages, translations, apt's lists and caches, the
//! device nodes devtmpfs replaces) and stored as an uncompressed cpio (newc) archive, ready to
//! be the first part of an initramfs: the kernel unpacks it without spending emulated CPU time
//! on decompression. It is cached under
//! `${ENFORCERD_CACHE:-~/.cache/enforcerd-dev}/rootfs/<suite>-<hash>/`, where the hash covers
//! everything that decides its contents (suite, mirror, variant, package list, trim list and
//! [`RECIPE_VERSION`]), so a changed recipe builds a new one and warm runs skip debootstrap.

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Bump when the build steps below change in a way the other inputs do not show.
pub const RECIPE_VERSION: u32 = 1;

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// What every systemd VM needs: systemd as init (`systemd-sysv` provides /sbin/init and
/// `poweroff`), and D-Bus, which `systemctl` and `systemd-run` talk to.
pub const BASE_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus"];

/// Removed from the tree after debootstrap (contents only: the directories stay, so packages
/// installed later in the VM can still unpack into them).
pub const TRIM: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/lib/apt/lists",
    "var/cache/apt",
    "dev",
];

/// The archive's file name inside its cache directory.
pub const ARCHIVE: &str = "rootfs.cpio";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub suite: String,
    pub mirror: String,
    /// Packages beyond debootstrap's minbase, sorted and deduplicated.
    pub packages: Vec<String>,
}

impl Recipe {
    /// `suite` with [`BASE_PACKAGES`] and `extra` (e.g. the dependencies of the package under
    /// test).
    pub fn new(suite: &str, mirror: &str, extra: &[String]) -> Recipe {
        let mut packages: Vec<String> = BASE_PACKAGES
            .iter()
            .map(|p| (*p).to_owned())
            .chain(extra.iter().cloned())
            .collect();
        packages.sort();
        packages.dedup();
        Recipe {
            suite: suite.to_owned(),
            mirror: mirror.to_owned(),
            packages,
        }
    }

    /// The recipe as text: what the hash covers, and what `recipe.txt` in the cache shows.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "recipe-version: {RECIPE_VERSION}");
        let _ = writeln!(s, "suite: {}", self.suite);
        let _ = writeln!(s, "mirror: {}", self.mirror);
        let _ = writeln!(s, "variant: minbase");
        let _ = writeln!(s, "include: {}", self.packages.join(","));
        let _ = writeln!(s, "trim: {}", TRIM.join(","));
        let _ = writeln!(s, "format: cpio newc, uncompressed");
        s
    }

    /// `<suite>-<first 16 hex digits of sha256(describe())>`.
    pub fn key(&self) -> String {
        let digest = Sha256::digest(self.describe().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.suite)
    }
}

/// The package names a `Depends:` field needs, each alternative group reduced to its first
/// member and version constraints and architecture qualifiers dropped.
pub fn depends_names(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|group| {
            let first = group.split('|').next()?.trim();
            let name = first
                .split(|c: char| c.is_whitespace() || c == '(')
                .next()?
                .split(':')
                .next()?
                .trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// The cached archive for `recipe`, building it first if it is not in `cache_root`.
pub fn ensure(recipe: &Recipe, cache_root: &Path) -> Result<PathBuf> {
    let dir = cache_root.join(recipe.key());
    let archive = dir.join(ARCHIVE);
    if archive.is_file() {
        println!("rootfs: cached {}", archive.display());
        return Ok(archive);
    }
    std::fs::create_dir_all(cache_root)
        .with_context(|| format!("creating {}", cache_root.display()))?;
    let build = cache_root.join(format!(".build-{}-{}", recipe.key(), std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let result = build_into(recipe, &build);
    let root = build.join("root");
    if root.exists() {
        let _ = std::fs::remove_dir_all(&root);
    }
    if let Err(e) = result {
        let log = build.join("debootstrap.log");
        let kept = cache_root.join(format!("failed-{}.log", recipe.key()));
        let _ = std::fs::rename(&log, &kept);
        let _ = std::fs::remove_dir_all(&build);
        return Err(e.context(format!("building the rootfs (log: {})", kept.display())));
    }
    match std::fs::rename(&build, &dir) {
        Ok(()) => {}
        // Another run finished the same recipe first: use theirs.
        Err(_) if archive.is_file() => {
            let _ = std::fs::remove_dir_all(&build);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&build);
            return Err(e).with_context(|| format!("moving the rootfs to {}", dir.display()));
        }
    }
    println!("rootfs: cached as {}", archive.display());
    Ok(archive)
}

fn build_into(recipe: &Recipe, build: &Path) -> Result<()> {
    if which("debootstrap").is_none() {
        bail!("debootstrap not found: apt-get install debootstrap (tools/setup installs it)");
    }
    if which("cpio").is_none() {
        bail!("cpio not found: apt-get install cpio");
    }
    let root = build.join("root");
    let log_path = build.join("debootstrap.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let t = Instant::now();
    println!(
        "rootfs: debootstrap {} ({}) with {} (a few minutes, once per recipe)",
        recipe.suite,
        recipe.mirror,
        recipe.packages.join(",")
    );
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(&recipe.suite)
        .arg(&root)
        .arg(&recipe.mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("debootstrap failed ({status}):\n{}", tail.join("\n"));
    }
    println!(
        "rootfs: debootstrap done in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    for rel in TRIM {
        let dir = root.join(rel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let p = entry?.path();
            let removed = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.with_context(|| format!("trimming {}", p.display()))?;
        }
    }
    std::fs::write(build.join("recipe.txt"), recipe.describe())?;
    // GNU cpio keeps owners, modes, hard links and device numbers; sorted names give a
    // reproducible order with every directory before its contents.
    let archive = build.join(ARCHIVE);
    let out = std::fs::File::create(&archive)
        .with_context(|| format!("creating {}", archive.display()))?;
    let status = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet")
        .current_dir(&root)
        .stdout(out)
        .status()
        .context("running find | cpio")?;
    if !status.success() {
        bail!("archiving the rootfs with cpio failed: {status}");
    }
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    println!(
        "rootfs: {:.0} MB archive in {:.0} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_keep_the_first_alternative_without_versions() {
        assert_eq!(
            depends_names("libc6 (>= 2.34), libgcc-s1 (>= 4.2), adduser | passwd:any, systemd"),
            ["libc6", "libgcc-s1", "adduser", "systemd"]
        );
        assert!(depends_names("").is_empty());
    }

    #[test]
    fn the_key_follows_every_input() {
        let a = Recipe::new("bookworm", DEFAULT_MIRROR, &[]);
        assert_eq!(a.packages, ["dbus", "systemd", "systemd-sysv"]);
        assert!(a.key().starts_with("bookworm-") && a.key().len() == "bookworm-".len() + 16);
        // The same set in another order or with duplicates is the same rootfs.
        let b = Recipe::new("bookworm", DEFAULT_MIRROR, &["systemd".into()]);
        assert_eq!(a.key(), b.key());
        let c = Recipe::new("bookworm", DEFAULT_MIRROR, &["libc6".into()]);
        assert_ne!(a.key(), c.key());
        let d = Recipe::new("trixie", DEFAULT_MIRROR, &[]);
        assert_ne!(a.key(), d.key());
        let e = Recipe::new("bookworm", "http://mirror.example/debian", &[]);
        assert_ne!(a.key(), e.key());
    }
}
