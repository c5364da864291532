//! Whether a profile file may be applied: minisign signatures, trusted keys and rollback
//! protection.
//!
//! - [`TrustedKeys`]: the minisign public keys (`*.pub`) of the trusted keys directory.
//! - [`verify_signature`]: checks a detached minisign signature (`X.yaml.sig`) over a profile's
//!   exact bytes; [`Verifier`] applies a [`TrustPolicy`] to a profile file.
//! - [`keygen`] and [`sign`]: keys and signatures the standard `minisign` tool accepts.
//! - [`SerialStore`]: the highest `serial` applied per profile name, persisted so that a
//!   rolled-back profile is refused also after a restart.
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::profile::Diagnostic;

mod fsutil;
mod keys;
mod serials;
mod sign;
mod signature;

pub use keys::TrustedKeys;
pub use serials::{SERIALS_FILE_NAME, SerialStore, default_serials_path};
pub use sign::{keygen, secret_key_is_encrypted, sign};
pub use signature::verify_signature;

/// File name suffix of a profile's detached signature: `web.yaml` is signed by `web.yaml.sig`.
pub const SIGNATURE_SUFFIX: &str = ".sig";

/// A signature file larger than this is refused without being read further (a minisign
/// signature is a few hundred bytes).
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustPolicy {
    /// Development only: apply profiles without checking signatures.
    AllowUnsigned,
    /// Apply only profiles with a valid signature by a key in `trusted_keys`.
    RequireSignature { trusted_keys: PathBuf },
}

impl TrustPolicy {
    pub fn new(allow_unsigned: bool, trusted_keys: PathBuf) -> Self {
        if allow_unsigned {
            TrustPolicy::AllowUnsigned
        } else {
            TrustPolicy::RequireSignature { trusted_keys }
        }
    }
}

/// The detached signature file of `profile`: the same path with `.sig` appended.
pub fn signature_path(profile: &Path) -> PathBuf {
    let mut s = profile.as_os_str().to_os_string();
    s.push(SIGNATURE_SUFFIX);
    PathBuf::from(s)
}

/// Checks profile files under a [`TrustPolicy`], with the trusted keys loaded once.
#[derive(Clone, Debug)]
pub struct Verifier {
    /// `None` under [`TrustPolicy::AllowUnsigned`].
    keys: Option<TrustedKeys>,
}

impl Verifier {
    /// Loads the trusted keys of `policy` (none for [`TrustPolicy::AllowUnsigned`]).
    pub fn new(policy: &TrustPolicy) -> Result<Verifier, Diagnostic> {
        let keys = match policy {
            TrustPolicy::AllowUnsigned => None,
            TrustPolicy::RequireSignature { trusted_keys } => {
                Some(TrustedKeys::load_dir(trusted_keys)?)
            }
        };
        Ok(Verifier { keys })
    }

    /// Whether profiles are applied without a signature (`--allow-unsigned`).
    pub fn allows_unsigned(&self) -> bool {
        self.keys.is_none()
    }

    /// Checks that the profile file `profile`, whose content is `bytes`, may be applied: under
    /// [`TrustPolicy::RequireSignature`], `<profile>.sig` must be a valid signature over `bytes`
    /// by a trusted key.
    pub fn verify(&self, profile: &Path, bytes: &[u8]) -> Result<(), Diagnostic> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let sig_path = signature_path(profile);
        let signature = read_signature(profile, &sig_path)?;
        verify_signature(keys, profile, bytes, &signature).map(|_key_id| ())
    }
}

/// Reads a signature file, bounded by [`MAX_SIGNATURE_BYTES`].
fn read_signature(profile: &Path, sig_path: &Path) -> Result<Vec<u8>, Diagnostic> {
    let refuse = |message: String| Diagnostic::new(profile, None, message);
    let file = match File::open(sig_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(refuse(format!("missing signature {}", sig_path.display())));
        }
        Err(e) => {
            return Err(refuse(format!(
                "cannot read signature {}: {e}",
                sig_path.display()
            )));
        }
    };
    let mut signature = Vec::new();
    file.take(MAX_SIGNATURE_BYTES + 1)
        .read_to_end(&mut signature)
        .map_err(|e| refuse(format!("cannot read signature {}: {e}", sig_path.display())))?;
    if signature.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err(refuse(format!(
            "malformed signature: {} is larger than {MAX_SIGNATURE_BYTES} bytes",
            sig_path.display()
        )));
    }
    Ok(signature)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for tests that need the reference `minisign` tool.
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// The `minisign` binary on PATH. Without it the calling test fails, unless
    /// `ENFORCERD_SKIP_MINISIGN=1`, in which case it returns `None` and the test skips itself.
    pub fn minisign_tool() -> Option<PathBuf> {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("minisign"))
                .find(|p| p.is_file())
        });
        match found {
            Some(p) => Some(p),
            None if std::env::var("ENFORCERD_SKIP_MINISIGN").as_deref() == Ok("1") => {
                eprintln!("skipped: no `minisign` on PATH and ENFORCERD_SKIP_MINISIGN=1");
                None
            }
            None => panic!(
                "this test needs the reference `minisign` tool on PATH (Debian package `minisign`, \
                 installed by tools/setup); set ENFORCERD_SKIP_MINISIGN=1 to skip it"
            ),
        }
    }

    /// Runs `minisign ARGS` in `dir` with `stdin` piped to it; returns (success, stdout+stderr).
    pub fn run(tool: &Path, dir: &Path, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = Command::new(tool)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run minisign");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Like [`run`], panicking with minisign's output if it fails.
    pub fn run_ok(tool: &Path, dir: &Path, args: &[&str], stdin: &str) -> String {
        let (ok, text) = run(tool, dir, args, stdin);
        assert!(ok, "minisign {args:?} failed:\n{text}");
        text
    }

    /// The key id minisign wrote in the comment of a public key file
    /// (`untrusted comment: minisign public key 6EB9D0A5D33D2759`).
    /// Normalized to minisign's own printing (`%PRIX64`, no leading zeros): the `minisign`
    /// crate pads the comment to 16 digits.
    pub fn key_id_of_pub(pub_file: &Path) -> String {
        let text = std::fs::read_to_string(pub_file).unwrap();
        let first = text.lines().next().unwrap();
        let id = first.rsplit(' ').next().unwrap();
        format!("{:X}", u64::from_str_radix(id, 16).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn allow_unsigned_accepts_without_reading_anything() {
        let v = Verifier::new(&TrustPolicy::AllowUnsigned).unwrap();
        assert!(v.allows_unsigned());
        v.verify(Path::new("/nonexistent/a.yaml"), b"anything")
            .unwrap();
    }

    #[test]
    fn signature_path_appends_sig() {
        assert_eq!(
            signature_path(Path::new("/p/web.yaml")),
            Path::new("/p/web.yaml.sig")
        );
        assert_eq!(signature_path(Path::new("web")), Path::new("web.sig"));
    }

    #[test]
    fn verifier_with_missing_keys_directory_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("trusted.d");
        let e = Verifier::new(&TrustPolicy::new(false, missing.clone()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: cannot read trusted keys directory: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn refusal_missing_signature() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("trusted.d");
        fs::create_dir(&keys).unwrap();
        let profile = dir.path().join("web.yaml");
        fs::write(&profile, "x").unwrap();
        let v = Verifier::new(&TrustPolicy::new(false, keys.clone())).unwrap();
        assert!(!v.allows_unsigned());
        let e = v.verify(&profile, b"x").unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{0}: missing signature {0}.sig", profile.display())
        );
    }

    #[test]
    fn refusal_oversized_signature() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("trusted.d");
        fs::create_dir(&keys).unwrap();
        let profile = dir.path().join("web.yaml");
        fs::write(signature_path(&profile), vec![b'a'; 70_000]).unwrap();
        let v = Verifier::new(&TrustPolicy::new(false, keys)).unwrap();
        let e = v.verify(&profile, b"x").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{0}: malformed signature: {0}.sig is larger than 65536 bytes",
                profile.display()
            )
        );
    }

    #[test]
    fn verifier_end_to_end_accepts_signed_and_refuses_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("trusted.d");
        fs::create_dir(&keys).unwrap();
        let sk = dir.path().join("test.key");
        let id = keygen(&sk, &keys.join("test.pub"), None, false).unwrap();
        let profile = dir.path().join("web.yaml");
        fs::write(&profile, "apiVersion: enforcerd/v1\n").unwrap();
        assert_eq!(sign(&sk, None, &profile).unwrap(), signature_path(&profile));

        let v = Verifier::new(&TrustPolicy::new(false, keys.clone())).unwrap();
        v.verify(&profile, b"apiVersion: enforcerd/v1\n").unwrap();
        let e = v
            .verify(&profile, b"apiVersion: enforcerd/v2\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: does not match its signature by key {id}: the file was changed after it was \
                 signed (tampered)",
                profile.display()
            )
        );
    }
}
