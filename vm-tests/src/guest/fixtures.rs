//! Files, binaries and profile directories the scenarios work on. Every helper is idempotent
//! and resets contents, so a scenario does not depend on what ran before it.

use anyhow::{Context as _, Result};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

pub const BUSYBOX: &str = "/bin/busybox";
/// A copy of busybox no exec allowlist names.
pub const DENIED_BUSYBOX: &str = "/opt/denied/busybox";
pub const ALLOWED_DIR: &str = "/opt/allowed";

pub const SECRET: &str = "/srv/secret/key";
pub const SECRET_CONTENT: &str = "top secret\n";
pub const DATA_DIR: &str = "/srv/data";
pub const REPORT: &str = "/srv/data/report.txt";
pub const REPORT_CONTENT: &str = "quarterly numbers\n";
pub const UPLOADS: &str = "/srv/data/uploads";
pub const PUBLIC: &str = "/srv/public/readme";
pub const PUBLIC_CONTENT: &str = "hello\n";

pub fn write(path: &str, content: &str, mode: u32) -> Result<()> {
    let p = Path::new(path);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(p, content).with_context(|| format!("writing {path}"))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {path}"))?;
    Ok(())
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {path}: {e}>"))
}

pub fn symlink(target: &str, link: &str) -> Result<()> {
    let _ = std::fs::remove_file(link);
    if let Some(dir) = Path::new(link).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {link} -> {target}"))
}

/// `/opt/denied/busybox`: the same bytes as the allowed /bin/busybox, at a path no allowlist
/// names.
pub fn denied_busybox() -> Result<()> {
    if !Path::new(DENIED_BUSYBOX).exists() {
        std::fs::create_dir_all("/opt/denied")?;
        std::fs::copy(BUSYBOX, DENIED_BUSYBOX).context("copying busybox to /opt/denied")?;
    }
    std::fs::set_permissions(DENIED_BUSYBOX, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The files below /srv, with their original contents.
pub fn srv_tree() -> Result<()> {
    write(SECRET, SECRET_CONTENT, 0o644)?;
    write(REPORT, REPORT_CONTENT, 0o644)?;
    std::fs::create_dir_all(UPLOADS)?;
    let _ = std::fs::remove_file(format!("{UPLOADS}/upload.txt"));
    write(PUBLIC, PUBLIC_CONTENT, 0o644)?;
    Ok(())
}

/// A fresh, empty profile directory for one daemon run.
pub fn profile_dir(name: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/tmp/profiles/{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn write_profile(dir: &Path, file: &str, yaml: &str) -> Result<PathBuf> {
    let p = dir.join(file);
    std::fs::write(&p, yaml).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// A profile document. `body` holds the `exec:`, `files:` and `network:` sections, indented
/// for their place under `spec:`.
pub fn profile(name: &str, cgroup: &str, mode: &str, on_violation: &str, body: &str) -> String {
    format!(
        "apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: {name}
  serial: 1
spec:
  selector:
    cgroup: {cgroup}
  mode: {mode}
  onViolation: {on_violation}
{body}"
    )
}

/// Sections that govern nothing, for profiles that only test one hook.
pub const EXEC_ALLOW_ALL: &str = "  exec:\n    default: allow\n";
pub const FILES_ALLOW_ALL: &str = "  files:\n    default: allow\n";
pub const CONNECT_ALLOW_ALL: &str = "  network:\n    connect:\n      default: allow\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_documents_are_yaml_with_the_body_under_spec() {
        let y = profile("p", "/cg", "enforce", "deny", EXEC_ALLOW_ALL);
        assert!(y.contains("\n    cgroup: /cg\n"));
        assert!(y.ends_with("  onViolation: deny\n  exec:\n    default: allow\n"));
    }
}
