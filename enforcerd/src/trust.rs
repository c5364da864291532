//! Whether a profile file may be applied: the seam where signature verification goes.
//!
//! This version does not verify minisign signatures yet. Rather than pretend, it refuses every
//! profile unless the operator passes `--allow-unsigned` (development only), which is logged
//! at every load.
use std::path::{Path, PathBuf};

use crate::profile::Diagnostic;

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

/// Checks that `profile` (the file at that path) may be applied under `policy`.
pub fn verify(policy: &TrustPolicy, profile: &Path) -> Result<(), Diagnostic> {
    match policy {
        TrustPolicy::AllowUnsigned => Ok(()),
        TrustPolicy::RequireSignature { trusted_keys } => Err(Diagnostic::new(
            profile,
            None,
            format!(
                "refused: this version of enforcerd cannot verify profile signatures yet \
                 (trusted keys in {}); pass --allow-unsigned to apply unsigned profiles \
                 (development only)",
                trusted_keys.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_unsigned_accepts() {
        verify(&TrustPolicy::new(true, "/k".into()), Path::new("/p/a.yaml")).unwrap();
    }

    #[test]
    fn without_allow_unsigned_every_profile_is_refused_with_its_name() {
        let e = verify(&TrustPolicy::new(false, "/etc/enforcerd/trusted.d".into()), Path::new("/p/a.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/p/a.yaml: refused: "), "{e}");
        assert!(e.contains("--allow-unsigned"), "{e}");
    }
}
