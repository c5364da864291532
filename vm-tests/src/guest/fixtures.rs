//! Files, binaries and profile directories the scenarios work on. Every helper is idempotent
//! and resets contents, so a scenario does not depend on what ran before it.

use super::daemon::{CommandOutput, ENFORCERD, run_command};
use anyhow::{Context as _, Result, bail};
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
    profile_with_serial(name, 1, cgroup, mode, on_violation, body)
}

/// `count` cgroups `PARENT/w000`, `PARENT/w001`, ..., each with a profile in `dir` holding
/// the rules of a typical service (3 exec, 3 file, 2 connect rules, some its own).
pub fn service_profiles(dir: &Path, parent: &str, count: usize) -> Result<Vec<super::sys::Cgroup>> {
    (0..count)
        .map(|i| {
            let cg = super::sys::Cgroup::create(&format!("{parent}/w{i:03}"))?;
            write_profile(
                dir,
                &format!("w{i:03}.yaml"),
                &profile(
                    &format!("w{i:03}"),
                    &cg.rel,
                    "enforce",
                    "deny",
                    &service_profile_body(i),
                ),
            )?;
            Ok(cg)
        })
        .collect()
}

fn service_profile_body(i: usize) -> String {
    format!(
        "  exec:\n    default: deny\n    allow: [/bin/, /usr/bin/, /opt/app{i}/]\n\
             \x20 files:\n    default: allow\n    rules:\n\
             \x20     - {{path: /srv/footprint/, access: [read, write], action: deny}}\n\
             \x20     - {{path: /etc/app{i}/, access: [write], action: deny}}\n\
             \x20     - {{path: /var/lib/app{i}/, access: [read, write], action: allow}}\n\
             \x20 network:\n    connect:\n      default: deny\n      allow:\n\
             \x20       - {{cidr: 10.{i}.0.0/16, ports: [5432], protocol: tcp}}\n\
             \x20       - {{cidr: 127.0.0.0/8, ports: [8080], protocol: tcp}}\n"
    )
}

/// [`profile`] with a chosen `metadata.serial`.
pub fn profile_with_serial(
    name: &str,
    serial: u64,
    cgroup: &str,
    mode: &str,
    on_violation: &str,
    body: &str,
) -> String {
    format!(
        "apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: {name}
  serial: {serial}
spec:
  selector:
    cgroup: {cgroup}
  mode: {mode}
  onViolation: {on_violation}
{body}"
    )
}

/// Where the scenarios keep signing keys (`NAME.key`, `NAME.pub`).
pub const KEYS_DIR: &str = "/tmp/keys";

/// A minisign key pair made by `enforcerd keygen` inside the VM.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub name: String,
    pub secret: String,
    pub public: String,
}

impl SigningKey {
    pub fn named(name: &str) -> SigningKey {
        SigningKey {
            name: name.to_owned(),
            secret: format!("{KEYS_DIR}/{name}.key"),
            public: format!("{KEYS_DIR}/{name}.pub"),
        }
    }

    /// `enforcerd keygen --secret-key K --public-key P --no-password --force`.
    pub fn generate(&self) -> CommandOutput {
        let _ = std::fs::create_dir_all(KEYS_DIR);
        run_command(
            ENFORCERD,
            &[
                "keygen",
                "--secret-key",
                &self.secret,
                "--public-key",
                &self.public,
                "--no-password",
                "--force",
            ],
        )
    }
}

/// The key pair `name`, generated on first use in this boot.
pub fn signing_key(name: &str) -> Result<SigningKey> {
    let key = SigningKey::named(name);
    if !(Path::new(&key.secret).exists() && Path::new(&key.public).exists()) {
        let out = key.generate();
        if out.code != Some(0) {
            bail!("enforcerd keygen for {name} failed: {}", out.summary());
        }
    }
    Ok(key)
}

/// A fresh trusted-keys directory `/tmp/trusted/<name>` holding the public keys of `keys`.
pub fn trusted_dir(name: &str, keys: &[&SigningKey]) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/tmp/trusted/{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for k in keys {
        std::fs::copy(&k.public, dir.join(format!("{}.pub", k.name)))
            .with_context(|| format!("copying {} into {}", k.public, dir.display()))?;
    }
    Ok(dir)
}

/// `enforcerd sign --key K FILE...`: writes `FILE.sig` next to each file.
pub fn sign(key: &SigningKey, files: &[&Path]) -> Result<()> {
    let mut args = vec!["sign".to_owned(), "--key".to_owned(), key.secret.clone()];
    for f in files {
        args.push(f.to_str().context("non-UTF-8 path")?.to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_command(ENFORCERD, &args);
    if out.code != Some(0) {
        bail!("enforcerd sign failed: {}", out.summary());
    }
    Ok(())
}

/// `path` with `.sig` appended: the detached signature of a profile file.
pub fn sig_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Flips one bit (ASCII case) of the first letter after `marker` in the file: the document
/// still parses, but it is no longer the one that was signed.
pub fn flip_byte_after(path: &Path, marker: &str) -> Result<()> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .with_context(|| format!("{marker:?} not in {}", path.display()))?
        + marker.len();
    let i = (at..bytes.len())
        .find(|&i| bytes[i].is_ascii_alphabetic())
        .with_context(|| format!("no letter after {marker:?} in {}", path.display()))?;
    bytes[i] ^= 0x20;
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// A string value of a JSON object, or "".
pub fn json_str<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(serde_json::Value::as_str).unwrap_or("")
}

/// The strings of a JSON array value (e.g. a status's `problems`), or none.
pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The strings of `key` (e.g. `cgroups`, `pending`) of profile `name` in a status, or none.
pub fn profile_strings(status: &serde_json::Value, name: &str, key: &str) -> Vec<String> {
    status["profiles"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .map(|p| json_strings(&p[key]))
        .unwrap_or_default()
}

/// Polls `pred` every 20 ms until it holds (how long that took) or `timeout` passes.
pub fn wait_until(
    timeout: std::time::Duration,
    mut pred: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let t0 = std::time::Instant::now();
    loop {
        if pred() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `s` is `sha256:` followed by 64 hex digits.
pub fn is_sha256_ref(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Sections that govern nothing, for profiles that only test one hook.
pub const EXEC_ALLOW_ALL: &str = "  exec:\n    default: allow\n";
pub const FILES_ALLOW_ALL: &str = "  files:\n    default: allow\n";
pub const CONNECT_ALLOW_ALL: &str = "  network:\n    connect:\n      default: allow\n";

/// A `Vm*:` line of /proc/PID/status, in KiB (0 if unreadable).
pub fn vm_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipping_a_byte_changes_one_letter_after_the_marker() {
        let d = std::env::temp_dir().join(format!("vm-tests-flip-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("p.yaml");
        std::fs::write(&f, "a: 1\n# revision 3\n").unwrap();
        flip_byte_after(&f, "# ").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a: 1\n# Revision 3\n");
        assert!(flip_byte_after(&f, "nope").is_err());
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(sig_path(Path::new("/p/a.yaml")), Path::new("/p/a.yaml.sig"));
        assert!(is_sha256_ref(&format!("sha256:{}", "0a".repeat(32))));
        assert!(!is_sha256_ref(&format!("sha256:{}", "0g".repeat(32))));
        assert!(!is_sha256_ref("sha256:00"));
    }

    #[test]
    fn profile_documents_are_yaml_with_the_body_under_spec() {
        let y = profile("p", "/cg", "enforce", "deny", EXEC_ALLOW_ALL);
        assert!(y.contains("\n    cgroup: /cg\n"));
        assert!(y.ends_with("  onViolation: deny\n  exec:\n    default: allow\n"));
    }
}
