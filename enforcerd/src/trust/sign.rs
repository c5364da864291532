//! Key generation and signing, compatible with the `minisign` tool both ways: its keys sign
//! here, and `minisign -V` accepts the signatures made here.
//!
//! A minisign secret key file is two lines: `untrusted comment: <text>` and the base64 of
//! `"Ed" || kdf ("Sc" = scrypt-encrypted, or two zero bytes) || "B2" || salt (32) ||
//! opslimit (8) || memlimit (8) || key id (8) || Ed25519 secret key (64) || checksum (32)`.
use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox};

use super::fsutil::{Existing, write_atomic};
use super::keys::{ALG_ED25519, UNTRUSTED_COMMENT_PREFIX, decode_base64, key_id_hex, show_bytes};
use super::signature_path;

/// The untrusted comment minisign writes in secret key files (encrypted or not).
const SECRET_KEY_COMMENT: &str = "minisign encrypted secret key";
/// The untrusted comment minisign writes in signatures.
const SIGNATURE_COMMENT: &str = "signature from minisign secret key";
const SECRET_KEY_BYTES: usize = 158;
const KDF: std::ops::Range<usize> = 2..4;
const CHECKSUM: std::ops::Range<usize> = 126..158;
const KDF_NONE: [u8; 2] = [0, 0];
const KDF_SCRYPT: [u8; 2] = *b"Sc";

/// Generates a key pair: the secret key (mode 0600) and the public key, in minisign's formats.
/// With `password`, the secret key is encrypted with scrypt as `minisign -G` does (with 32 MiB
/// scrypt parameters where minisign uses 1 GiB; both tools read them from the key file);
/// without, it is not (as `minisign -G -W`). Existing files are refused unless `force`.
/// Returns the key id, as minisign prints it.
pub fn keygen(
    secret_key: &Path,
    public_key: &Path,
    password: Option<&str>,
    force: bool,
) -> Result<String, String> {
    if secret_key == public_key {
        return Err(format!(
            "{}: the secret key and the public key must be different files",
            secret_key.display()
        ));
    }
    if !force {
        for path in [secret_key, public_key] {
            if path.symlink_metadata().is_ok() {
                return Err(already_exists(path));
            }
        }
    }
    let pair = match password {
        None => KeyPair::generate_unencrypted_keypair(),
        Some(password) => KeyPair::generate_encrypted_keypair(Some(password.to_string())),
    }
    .map_err(|e| format!("cannot generate a key pair: {e}"))?;
    let sk_box = pair
        .sk
        .to_box(Some(SECRET_KEY_COMMENT))
        .map_err(|e| format!("cannot encode the secret key: {e}"))?;
    let pk_box = pair
        .pk
        .to_box()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    let existing = if force {
        Existing::Replace
    } else {
        Existing::Keep
    };
    write_atomic(secret_key, &sk_box.to_bytes(), 0o600, existing)
        .map_err(|e| write_error(secret_key, e))?;
    if let Err(e) = write_atomic(public_key, &pk_box.to_bytes(), 0o644, existing) {
        if !force {
            let _ = fs::remove_file(secret_key);
        }
        return Err(write_error(public_key, e));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(pair.pk.keynum());
    Ok(key_id_hex(&id))
}

/// Whether the secret key file at `secret_key` is password-protected (then [`sign`] needs the
/// password). Lets a caller prompt only when needed.
pub fn secret_key_is_encrypted(secret_key: &Path) -> Result<bool, String> {
    let (_, bin) = read_secret_key(secret_key)?;
    Ok(bin[KDF] == KDF_SCRYPT)
}

/// Signs `file` with the minisign secret key at `secret_key` (`password` is needed if the key is
/// encrypted, and ignored if not), writing the detached signature `<file>.sig` atomically.
/// The signature is minisign's default kind (prehashed), with a trusted comment like
/// minisign's: `timestamp:<unix time>\tfile:<file name>\thashed`. Returns the `.sig` path.
pub fn sign(secret_key: &Path, password: Option<&str>, file: &Path) -> Result<PathBuf, String> {
    let sk = load_secret_key(secret_key, password)?;
    let pk =
        PublicKey::from_secret_key(&sk).map_err(|e| format!("{}: {e}", secret_key.display()))?;
    let bytes = fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let trusted_comment = format!(
        "timestamp:{timestamp}\tfile:{}\thashed",
        comment_file_name(file)
    );
    let signature = minisign::sign(
        Some(&pk),
        &sk,
        Cursor::new(&bytes),
        Some(&trusted_comment),
        Some(SIGNATURE_COMMENT),
    )
    .map_err(|e| {
        format!(
            "{}: cannot sign with {}: {e}",
            file.display(),
            secret_key.display()
        )
    })?;
    let out = signature_path(file);
    write_atomic(&out, &signature.to_bytes(), 0o644, Existing::Replace)
        .map_err(|e| write_error(&out, e))?;
    Ok(out)
}

/// The file name as it goes into a trusted comment: one line, no control characters.
fn comment_file_name(file: &Path) -> String {
    let name = file
        .file_name()
        .unwrap_or(file.as_os_str())
        .to_string_lossy();
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Reads and checks the layout of a secret key file: (its comment line, the decoded key).
fn read_secret_key(path: &Path) -> Result<(String, Vec<u8>), String> {
    let malformed = |what: &str| format!("{}: malformed secret key: {what}", path.display());
    let text =
        fs::read(path).map_err(|e| format!("{}: cannot read secret key: {e}", path.display()))?;
    let text = String::from_utf8(text).map_err(|_| malformed("not UTF-8 text"))?;
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or("");
    if !comment.starts_with(UNTRUSTED_COMMENT_PREFIX) {
        return Err(malformed(&format!(
            "line 1 does not start with {UNTRUSTED_COMMENT_PREFIX:?}"
        )));
    }
    let bin = decode_base64(lines.next().unwrap_or(""))
        .ok_or_else(|| malformed("line 2 is not valid base64"))?;
    if bin.len() != SECRET_KEY_BYTES {
        return Err(malformed(&format!(
            "line 2 decodes to {} bytes, expected {SECRET_KEY_BYTES}",
            bin.len()
        )));
    }
    if bin[..2] != ALG_ED25519 {
        return Err(malformed(&format!(
            "unknown key algorithm {}",
            show_bytes(&bin[..2])
        )));
    }
    if bin[KDF] != KDF_NONE && bin[KDF] != KDF_SCRYPT {
        return Err(malformed(&format!(
            "unknown key encryption {}",
            show_bytes(&bin[KDF])
        )));
    }
    Ok((comment.to_string(), bin))
}

/// Loads (and if needed decrypts) a minisign secret key.
fn load_secret_key(path: &Path, password: Option<&str>) -> Result<SecretKey, String> {
    let (comment, bin) = read_secret_key(path)?;
    let canonical = format!("{comment}\n{}\n", ct_codecs_encode(&bin));
    let sk_box =
        SecretKeyBox::from_string(&canonical).map_err(|e| format!("{}: {e}", path.display()))?;
    if bin[KDF] == KDF_NONE {
        // `minisign -G -W` leaves the checksum of an unencrypted key zero; the key's integrity
        // is then checked when signing (the signature must verify with its public half).
        if bin[CHECKSUM].iter().all(|&b| b == 0) {
            return SecretKey::from_bytes(&bin)
                .map_err(|e| format!("{}: malformed secret key: {e}", path.display()));
        }
        return SecretKey::from_unencrypted_box(sk_box)
            .map_err(|_| format!("{}: corrupt secret key (checksum mismatch)", path.display()));
    }
    let Some(password) = password else {
        return Err(format!(
            "{}: the secret key is encrypted: a password is needed",
            path.display()
        ));
    };
    // Never called without a password: the library would prompt on the terminal.
    SecretKey::from_box(sk_box, Some(password.to_string())).map_err(|e| {
        if e.to_string().starts_with("Wrong password") {
            format!("{}: wrong password for this secret key", path.display())
        } else {
            format!("{}: cannot decrypt the secret key: {e}", path.display())
        }
    })
}

fn ct_codecs_encode(bin: &[u8]) -> String {
    <ct_codecs::Base64 as ct_codecs::Encoder>::encode_to_string(bin).unwrap_or_default()
}

fn already_exists(path: &Path) -> String {
    format!(
        "{}: already exists; refusing to overwrite it without force",
        path.display()
    )
}

fn write_error(path: &Path, e: io::Error) -> String {
    if e.kind() == io::ErrorKind::AlreadyExists {
        already_exists(path)
    } else {
        format!("{}: cannot write: {e}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::keys::TrustedKeys;
    use crate::trust::signature::verify_signature;
    use crate::trust::testutil::{key_id_of_pub, minisign_tool, run, run_ok};
    use std::os::unix::fs::PermissionsExt;

    struct Setup {
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new() -> Self {
            Setup {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn profile(&self, name: &str, content: &str) -> PathBuf {
            let p = self.path(name);
            fs::write(&p, content).unwrap();
            p
        }
        /// Verifies `<profile>.sig` with the public key `pub_name` the way the daemon does.
        fn verify(&self, pub_name: &str, profile: &Path) -> Result<String, String> {
            let keys = TrustedKeys::parse(
                &self.path(pub_name),
                &fs::read_to_string(self.path(pub_name)).unwrap(),
            )
            .map_err(|d| d.to_string())?;
            let sig = fs::read(signature_path(profile)).unwrap();
            verify_signature(&keys, profile, &fs::read(profile).unwrap(), &sig)
                .map_err(|d| d.to_string())
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keygen_writes_a_key_pair_and_sign_verifies() {
        let s = Setup::new();
        let id = keygen(&s.path("k.key"), &s.path("k.pub"), None, false).unwrap();
        // Upper-case hex without zero padding, as minisign prints key ids: up to 16 digits.
        assert!(
            (1..=16).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(key_id_of_pub(&s.path("k.pub")), id);
        assert_eq!(mode(&s.path("k.key")), 0o600);
        assert!(!secret_key_is_encrypted(&s.path("k.key")).unwrap());
        let text = fs::read_to_string(s.path("k.key")).unwrap();
        assert!(
            text.starts_with("untrusted comment: minisign encrypted secret key\n"),
            "{text}"
        );

        let profile = s.profile("web.yaml", "apiVersion: enforcerd/v1\n");
        let out = sign(&s.path("k.key"), None, &profile).unwrap();
        assert_eq!(out, s.path("web.yaml.sig"));
        assert_eq!(s.verify("k.pub", &profile).unwrap(), id);
        // Trusted comment like minisign's, prehashed signature ("ED").
        let sig = fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = sig.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "untrusted comment: signature from minisign secret key"
        );
        assert!(lines[1].starts_with("RU"), "{}", lines[1]);
        let tc = lines[2]
            .strip_prefix("trusted comment: timestamp:")
            .unwrap();
        let (ts, rest) = tc.split_once('\t').unwrap();
        assert!(ts.parse::<u64>().unwrap() > 1_700_000_000);
        assert_eq!(rest, "file:web.yaml\thashed");
        // Only the profile, its signature and the keys: no temporary files.
        let mut names: Vec<String> = fs::read_dir(s.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["k.key", "k.pub", "web.yaml", "web.yaml.sig"]);
        // Re-signing replaces the signature.
        sign(
            &s.path("k.key"),
            Some("ignored for an unencrypted key"),
            &profile,
        )
        .unwrap();
        assert_eq!(s.verify("k.pub", &profile).unwrap(), id);
    }

    #[test]
    fn keygen_refuses_to_overwrite_unless_forced() {
        let s = Setup::new();
        let first = keygen(&s.path("k.key"), &s.path("k.pub"), None, false).unwrap();
        let before = fs::read(s.path("k.key")).unwrap();
        assert_eq!(
            keygen(&s.path("k.key"), &s.path("other.pub"), None, false).unwrap_err(),
            format!(
                "{}: already exists; refusing to overwrite it without force",
                s.path("k.key").display()
            )
        );
        assert_eq!(
            keygen(&s.path("other.key"), &s.path("k.pub"), None, false).unwrap_err(),
            format!(
                "{}: already exists; refusing to overwrite it without force",
                s.path("k.pub").display()
            )
        );
        assert!(!s.path("other.key").exists() && !s.path("other.pub").exists());
        assert_eq!(fs::read(s.path("k.key")).unwrap(), before);
        let second = keygen(&s.path("k.key"), &s.path("k.pub"), None, true).unwrap();
        assert_ne!(first, second);
        assert_eq!(mode(&s.path("k.key")), 0o600);
        assert_eq!(key_id_of_pub(&s.path("k.pub")), second);
        assert_eq!(
            keygen(&s.path("k.key"), &s.path("k.key"), None, true).unwrap_err(),
            format!(
                "{}: the secret key and the public key must be different files",
                s.path("k.key").display()
            )
        );
    }

    /// Each use of an encrypted key derives scrypt (32 MiB): slow in unoptimized builds, so
    /// one test covers enforcerd's encrypted keys, with and without the reference tool.
    #[test]
    fn encrypted_key_needs_its_password_and_works_with_minisign() {
        let s = Setup::new();
        let id = keygen(
            &s.path("k.key"),
            &s.path("k.pub"),
            Some("correct horse"),
            false,
        )
        .unwrap();
        assert!(secret_key_is_encrypted(&s.path("k.key")).unwrap());
        assert_eq!(mode(&s.path("k.key")), 0o600);
        let profile = s.profile("web.yaml", "x: 1\n");
        assert_eq!(
            sign(&s.path("k.key"), None, &profile).unwrap_err(),
            format!(
                "{}: the secret key is encrypted: a password is needed",
                s.path("k.key").display()
            )
        );
        assert_eq!(
            sign(&s.path("k.key"), Some("wrong"), &profile).unwrap_err(),
            format!(
                "{}: wrong password for this secret key",
                s.path("k.key").display()
            )
        );
        assert!(!signature_path(&profile).exists());
        sign(&s.path("k.key"), Some("correct horse"), &profile).unwrap();
        assert_eq!(s.verify("k.pub", &profile).unwrap(), id);

        let Some(tool) = minisign_tool() else { return };
        let dir = s.dir.path();
        // minisign verifies the signature made with enforcerd's encrypted key...
        run_ok(
            &tool,
            dir,
            &["-V", "-p", "k.pub", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "",
        );
        // ... and decrypts that key (password on stdin) to sign; enforcerd verifies.
        let other = s.profile("db.yaml", "c: d\n");
        run_ok(
            &tool,
            dir,
            &["-S", "-s", "k.key", "-m", "db.yaml", "-x", "db.yaml.sig"],
            "correct horse\n",
        );
        assert_eq!(s.verify("k.pub", &other).unwrap(), id);
    }

    #[test]
    fn sign_refusals() {
        let s = Setup::new();
        keygen(&s.path("k.key"), &s.path("k.pub"), None, false).unwrap();
        let missing = s.path("missing.yaml");
        assert_eq!(
            sign(&s.path("k.key"), None, &missing).unwrap_err(),
            format!(
                "{}: cannot read: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let profile = s.profile("web.yaml", "x: 1\n");
        assert_eq!(
            sign(&s.path("k.pub"), None, &profile).unwrap_err(),
            format!(
                "{}: malformed secret key: line 2 decodes to 42 bytes, expected 158",
                s.path("k.pub").display()
            )
        );
        assert_eq!(
            sign(&s.path("nope.key"), None, &profile).unwrap_err(),
            format!(
                "{}: cannot read secret key: No such file or directory (os error 2)",
                s.path("nope.key").display()
            )
        );
        // A flipped bit in the key material of a key with a checksum.
        let text = fs::read_to_string(s.path("k.key")).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut bin = decode_base64(&lines[1]).unwrap();
        bin[70] ^= 1;
        lines[1] = ct_codecs_encode(&bin);
        fs::write(s.path("bad.key"), lines.join("\n")).unwrap();
        assert_eq!(
            sign(&s.path("bad.key"), None, &profile).unwrap_err(),
            format!(
                "{}: corrupt secret key (checksum mismatch)",
                s.path("bad.key").display()
            )
        );
        assert!(!signature_path(&profile).exists());
    }

    #[test]
    fn trusted_comment_file_name_is_one_line() {
        assert_eq!(
            comment_file_name(Path::new("/a/we\nb\t.yaml")),
            "we?b?.yaml"
        );
        assert_eq!(comment_file_name(Path::new("web.yaml")), "web.yaml");
    }

    // Round trips with the reference `minisign` tool.

    #[test]
    fn minisign_verifies_enforcerd_signatures() {
        let Some(tool) = minisign_tool() else { return };
        let s = Setup::new();
        let dir = s.dir.path();
        keygen(&s.path("k.key"), &s.path("k.pub"), None, false).unwrap();
        let profile = s.profile("web.yaml", "apiVersion: enforcerd/v1\nkind: Profile\n");
        sign(&s.path("k.key"), None, &profile).unwrap();
        let out = run_ok(
            &tool,
            dir,
            &["-V", "-p", "k.pub", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "",
        );
        assert!(
            out.contains("Signature and comment signature verified"),
            "{out}"
        );
        assert!(out.contains("file:web.yaml\thashed"), "{out}");
        // ... requiring a prehashed signature, as current minisign makes by default.
        run_ok(
            &tool,
            dir,
            &[
                "-V",
                "-H",
                "-p",
                "k.pub",
                "-m",
                "web.yaml",
                "-x",
                "web.yaml.sig",
            ],
            "",
        );
        // And minisign refuses it once the profile is tampered with.
        fs::write(&profile, "apiVersion: enforcerd/v2\nkind: Profile\n").unwrap();
        let (ok, out) = run(
            &tool,
            dir,
            &["-V", "-p", "k.pub", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "",
        );
        assert!(!ok, "{out}");
    }

    #[test]
    fn enforcerd_verifies_minisign_signatures_unencrypted_key() {
        let Some(tool) = minisign_tool() else { return };
        let s = Setup::new();
        let dir = s.dir.path();
        run_ok(&tool, dir, &["-G", "-W", "-p", "m.pub", "-s", "m.key"], "");
        let id = key_id_of_pub(&s.path("m.pub"));
        let profile = s.profile("web.yaml", "apiVersion: enforcerd/v1\n");
        run_ok(
            &tool,
            dir,
            &["-S", "-s", "m.key", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "",
        );
        assert_eq!(s.verify("m.pub", &profile).unwrap(), id);
        // Legacy (not prehashed) signatures, too.
        run_ok(
            &tool,
            dir,
            &[
                "-S",
                "-l",
                "-s",
                "m.key",
                "-m",
                "web.yaml",
                "-x",
                "web.yaml.sig",
            ],
            "",
        );
        assert!(
            fs::read_to_string(signature_path(&profile))
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("RW")
        );
        assert_eq!(s.verify("m.pub", &profile).unwrap(), id);
        // Tampered: one flipped byte.
        fs::write(&profile, "apiVersion: enforcerd/v0\n").unwrap();
        assert_eq!(
            s.verify("m.pub", &profile).unwrap_err(),
            format!(
                "{}: does not match its signature by key {id}: the file was changed after it was signed (tampered)",
                profile.display()
            )
        );
        // enforcerd signs with minisign's unencrypted key; minisign verifies.
        assert!(!secret_key_is_encrypted(&s.path("m.key")).unwrap());
        sign(&s.path("m.key"), None, &profile).unwrap();
        run_ok(
            &tool,
            dir,
            &["-V", "-p", "m.pub", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "",
        );
        assert_eq!(s.verify("m.pub", &profile).unwrap(), id);
        // minisign's unencrypted keys carry no checksum: a corrupted one is caught when signing.
        let text = fs::read_to_string(s.path("m.key")).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut bin = decode_base64(&lines[1]).unwrap();
        assert!(bin[CHECKSUM].iter().all(|&b| b == 0));
        bin[70] ^= 1;
        lines[1] = ct_codecs_encode(&bin);
        fs::write(s.path("bad.key"), lines.join("\n")).unwrap();
        let e = sign(&s.path("bad.key"), None, &profile).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}: cannot sign with {}: ",
                profile.display(),
                s.path("bad.key").display()
            )),
            "{e}"
        );
        assert_eq!(
            s.verify("m.pub", &profile).unwrap(),
            id,
            "the previous signature is untouched"
        );
    }

    #[test]
    fn enforcerd_verifies_minisign_signatures_encrypted_key() {
        let Some(tool) = minisign_tool() else { return };
        let s = Setup::new();
        let dir = s.dir.path();
        run_ok(
            &tool,
            dir,
            &["-G", "-p", "m.pub", "-s", "m.key"],
            "pw 1\npw 1\n",
        );
        let id = key_id_of_pub(&s.path("m.pub"));
        assert!(secret_key_is_encrypted(&s.path("m.key")).unwrap());
        let profile = s.profile("web.yaml", "apiVersion: enforcerd/v1\n");
        run_ok(
            &tool,
            dir,
            &["-S", "-s", "m.key", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "pw 1\n",
        );
        assert_eq!(s.verify("m.pub", &profile).unwrap(), id);
        // enforcerd decrypts minisign's key and signs; minisign verifies.
        sign(&s.path("m.key"), Some("pw 1"), &profile).unwrap();
        run_ok(
            &tool,
            dir,
            &["-V", "-p", "m.pub", "-m", "web.yaml", "-x", "web.yaml.sig"],
            "",
        );
        assert_eq!(s.verify("m.pub", &profile).unwrap(), id);
    }

    #[test]
    fn signature_by_another_minisign_key_is_untrusted() {
        let Some(tool) = minisign_tool() else { return };
        let s = Setup::new();
        let dir = s.dir.path();
        run_ok(
            &tool,
            dir,
            &["-G", "-W", "-p", "trusted.pub", "-s", "trusted.key"],
            "",
        );
        run_ok(
            &tool,
            dir,
            &["-G", "-W", "-p", "other.pub", "-s", "other.key"],
            "",
        );
        let other = key_id_of_pub(&s.path("other.pub"));
        let profile = s.profile("web.yaml", "apiVersion: enforcerd/v1\n");
        run_ok(
            &tool,
            dir,
            &[
                "-S",
                "-s",
                "other.key",
                "-m",
                "web.yaml",
                "-x",
                "web.yaml.sig",
            ],
            "",
        );
        assert_eq!(
            s.verify("trusted.pub", &profile).unwrap_err(),
            format!(
                "{}: signed by untrusted key {other} (no such key in {})",
                profile.display(),
                s.path("trusted.pub").display()
            )
        );
    }
}
