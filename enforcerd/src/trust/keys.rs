//! Trusted minisign public keys: every `*.pub` file of the trusted keys directory.
//!
//! A minisign public key file is two lines: `untrusted comment: <text>` and the base64 of
//! `"Ed" || key id (8 bytes) || Ed25519 public key (32 bytes)`.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ct_codecs::{Base64, Decoder};

use crate::profile::Diagnostic;

pub(super) const UNTRUSTED_COMMENT_PREFIX: &str = "untrusted comment: ";
/// minisign's Ed25519 algorithm id (also the id of legacy, not prehashed, signatures).
pub(super) const ALG_ED25519: [u8; 2] = *b"Ed";
const PUBLIC_KEY_BYTES: usize = 2 + 8 + 32;
const SECRET_KEY_BYTES: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

/// A key id as minisign prints it: the 8 bytes read as a little-endian u64, in upper-case hex
/// without leading zeros (`minisign public key 6EB9D0A5D33D2759`; minisign uses `%PRIX64`, so
/// one key in sixteen has 15 digits or fewer).
pub(super) fn key_id_hex(id: &[u8; 8]) -> String {
    format!("{:X}", u64::from_le_bytes(*id))
}

/// Decodes standard padded base64 (surrounding whitespace ignored).
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    Base64::decode_to_vec(text.trim(), None).ok()
}

/// `bytes` for a message: `"Ed"` when printable, hex otherwise.
pub(super) fn show_bytes(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic()) {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        format!("0x{}", hex::encode(bytes))
    }
}

/// One trusted key.
#[derive(Clone, Debug)]
pub(super) struct TrustedKey {
    /// The verifier's form of the key.
    pub(super) key: minisign_verify::PublicKey,
    /// The base64 line of the .pub file (the Ed25519 key is compared through it).
    pub(super) base64: String,
    /// The file it was read from.
    pub(super) file: PathBuf,
}

/// Trusted public keys: every `*.pub` minisign public key file in a directory.
#[derive(Clone, Debug)]
pub struct TrustedKeys {
    by_id: BTreeMap<[u8; 8], TrustedKey>,
    /// Where the keys come from (the directory, or the one file), for messages.
    origin: PathBuf,
}

impl TrustedKeys {
    /// Loads every `*.pub` file of `dir` (symlinks followed; other files and subdirectories
    /// ignored). A missing or unreadable directory, or a malformed or unreadable `.pub` file, is
    /// an error naming that path. An empty directory is valid: then no signature is trusted.
    pub fn load_dir(dir: &Path) -> Result<TrustedKeys, Diagnostic> {
        let read_dir_error = |e: std::io::Error| {
            Diagnostic::new(
                dir,
                None,
                format!("cannot read trusted keys directory: {e}"),
            )
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            if path.extension().is_some_and(|e| e == "pub") && !path.is_dir() {
                files.push(path);
            }
        }
        files.sort();
        let mut keys = TrustedKeys {
            by_id: BTreeMap::new(),
            origin: dir.to_path_buf(),
        };
        for file in files {
            let bytes = fs::read(&file).map_err(|e| {
                Diagnostic::new(&file, None, format!("cannot read public key: {e}"))
            })?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                Diagnostic::new(&file, None, "malformed public key: not UTF-8 text")
            })?;
            let key = parse_public_key(&file, text)?;
            keys.insert(key)?;
        }
        Ok(keys)
    }

    /// One public key from the text of a minisign `.pub` file (`file` only names it in errors).
    pub fn parse(file: &Path, text: &str) -> Result<TrustedKeys, Diagnostic> {
        let mut keys = TrustedKeys {
            by_id: BTreeMap::new(),
            origin: file.to_path_buf(),
        };
        keys.insert(parse_public_key(file, text)?)?;
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The key ids, as minisign prints them, in order.
    pub fn key_ids(&self) -> Vec<String> {
        self.by_id.keys().map(key_id_hex).collect()
    }

    /// The directory (or file) the keys were loaded from.
    pub(super) fn origin(&self) -> &Path {
        &self.origin
    }

    pub(super) fn get(&self, id: &[u8; 8]) -> Option<&TrustedKey> {
        self.by_id.get(id)
    }

    /// Adds a key; the same key twice is fine, two different keys with one id are not.
    fn insert(&mut self, (id, key): ([u8; 8], TrustedKey)) -> Result<(), Diagnostic> {
        if let Some(other) = self.by_id.get(&id) {
            if other.base64 == key.base64 {
                return Ok(());
            }
            return Err(Diagnostic::new(
                &key.file,
                None,
                format!(
                    "key id {} is also used by {} for a different key",
                    key_id_hex(&id),
                    other.file.display()
                ),
            ));
        }
        self.by_id.insert(id, key);
        Ok(())
    }
}

/// Parses the text of a minisign public key file.
fn parse_public_key(file: &Path, text: &str) -> Result<([u8; 8], TrustedKey), Diagnostic> {
    let malformed =
        |what: String| Diagnostic::new(file, None, format!("malformed public key: {what}"));
    let mut lines = text.lines();
    let comment = lines
        .next()
        .filter(|l| !l.trim().is_empty())
        .ok_or_else(|| malformed("empty file".into()))?;
    if !comment.starts_with(UNTRUSTED_COMMENT_PREFIX) {
        return Err(malformed(format!(
            "line 1 does not start with {UNTRUSTED_COMMENT_PREFIX:?}"
        )));
    }
    let line = lines.next().map(str::trim).unwrap_or("");
    if line.is_empty() {
        return Err(malformed("line 2 (the base64 key) is missing".into()));
    }
    let bin = decode_base64(line).ok_or_else(|| malformed("line 2 is not valid base64".into()))?;
    if bin.len() != PUBLIC_KEY_BYTES {
        let hint = if bin.len() == SECRET_KEY_BYTES {
            " (this is a secret key: remove it, and never publish it)"
        } else {
            ""
        };
        return Err(malformed(format!(
            "line 2 decodes to {} bytes, expected {PUBLIC_KEY_BYTES}{hint}",
            bin.len()
        )));
    }
    if bin[..2] != ALG_ED25519 {
        return Err(malformed(format!(
            "unknown key algorithm {} (expected {})",
            show_bytes(&bin[..2]),
            show_bytes(&ALG_ED25519)
        )));
    }
    let key =
        minisign_verify::PublicKey::from_base64(line).map_err(|e| malformed(e.to_string()))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&bin[2..10]);
    Ok((
        id,
        TrustedKey {
            key,
            base64: line.to_string(),
            file: file.to_path_buf(),
        },
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key minisign generated: `minisign -G -W` (id 6EB9D0A5D33D2759).
    pub(crate) const MINISIGN_PUB: &str = "untrusted comment: minisign public key 6EB9D0A5D33D2759\n\
        RWRZJz3TpdC5bo5MNSwYPLioFuD9h5JadLbLpL6BjxHWM0dFT6SzKmyR\n";

    fn err(text: &str) -> String {
        TrustedKeys::parse(Path::new("/k/a.pub"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_minisign_public_key_with_its_id() {
        let k = TrustedKeys::parse(Path::new("/k/a.pub"), MINISIGN_PUB).unwrap();
        assert_eq!(k.len(), 1);
        assert!(!k.is_empty());
        assert_eq!(k.key_ids(), ["6EB9D0A5D33D2759"]);
        // CRLF line ends and a missing final newline are fine.
        let crlf = MINISIGN_PUB.replace('\n', "\r\n");
        TrustedKeys::parse(Path::new("/k/a.pub"), crlf.trim_end()).unwrap();
    }

    #[test]
    fn refusal_malformed_public_keys() {
        assert_eq!(err(""), "/k/a.pub: malformed public key: empty file");
        assert_eq!(
            err("garbage\n"),
            "/k/a.pub: malformed public key: line 1 does not start with \"untrusted comment: \""
        );
        assert_eq!(
            err("untrusted comment: x\n"),
            "/k/a.pub: malformed public key: line 2 (the base64 key) is missing"
        );
        assert_eq!(
            err("untrusted comment: x\nnot base64!\n"),
            "/k/a.pub: malformed public key: line 2 is not valid base64"
        );
        // Truncated key.
        assert_eq!(
            err("untrusted comment: x\nRWRZJz3TpdC5bo5MNSwYPLioFuD9h5JadLbLpL6BjxHWM0dF\n"),
            "/k/a.pub: malformed public key: line 2 decodes to 36 bytes, expected 42"
        );
        // Wrong algorithm bytes ("EX" instead of "Ed").
        let mut bin =
            decode_base64("RWRZJz3TpdC5bo5MNSwYPLioFuD9h5JadLbLpL6BjxHWM0dFT6SzKmyR").unwrap();
        bin[1] = b'X';
        let line = <Base64 as ct_codecs::Encoder>::encode_to_string(&bin).unwrap();
        assert_eq!(
            err(&format!("untrusted comment: x\n{line}\n")),
            "/k/a.pub: malformed public key: unknown key algorithm \"EX\" (expected \"Ed\")"
        );
        // A secret key put there by mistake.
        let sk = "untrusted comment: minisign encrypted secret key\n\
            RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAWSc906XQuW6KzHU0Hx/H8kNO9KQQRtxjmzWjV8Ty0+k0ONHEVW4qgI5MNSwYPLioFuD9h5JadLbLpL6BjxHWM0dFT6SzKmyRAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        assert_eq!(
            err(sk),
            "/k/a.pub: malformed public key: line 2 decodes to 158 bytes, expected 42 \
             (this is a secret key: remove it, and never publish it)"
        );
    }

    #[test]
    fn load_dir_reads_every_pub_file_and_ignores_others() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.pub"), MINISIGN_PUB).unwrap();
        fs::write(dir.path().join("same-again.pub"), MINISIGN_PUB).unwrap();
        fs::write(dir.path().join("README"), "not a key").unwrap();
        fs::write(dir.path().join("a.pub.bak"), "not a key").unwrap();
        fs::create_dir(dir.path().join("sub.pub")).unwrap();
        let k = TrustedKeys::load_dir(dir.path()).unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(k.origin(), dir.path());
    }

    #[test]
    fn load_dir_empty_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let k = TrustedKeys::load_dir(dir.path()).unwrap();
        assert!(k.is_empty());
        assert_eq!(k.len(), 0);
    }

    #[test]
    fn refusal_malformed_pub_in_trusted_dir_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.pub"), MINISIGN_PUB).unwrap();
        fs::write(dir.path().join("broken.pub"), "hello\n").unwrap();
        let e = TrustedKeys::load_dir(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: malformed public key: line 1 does not start with \"untrusted comment: \"",
                dir.path().join("broken.pub").display()
            )
        );
        fs::write(dir.path().join("broken.pub"), [0xff, 0xfe]).unwrap();
        let e = TrustedKeys::load_dir(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: malformed public key: not UTF-8 text",
                dir.path().join("broken.pub").display()
            )
        );
    }

    #[test]
    fn refusal_missing_directory_and_dangling_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(
            TrustedKeys::load_dir(&missing).unwrap_err().to_string(),
            format!(
                "{}: cannot read trusted keys directory: No such file or directory (os error 2)",
                missing.display()
            )
        );
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("x.pub")).unwrap();
        assert_eq!(
            TrustedKeys::load_dir(dir.path()).unwrap_err().to_string(),
            format!(
                "{}: cannot read public key: No such file or directory (os error 2)",
                dir.path().join("x.pub").display()
            )
        );
    }

    #[test]
    fn refusal_one_id_for_two_different_keys() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.pub"), MINISIGN_PUB).unwrap();
        let mut bin =
            decode_base64("RWRZJz3TpdC5bo5MNSwYPLioFuD9h5JadLbLpL6BjxHWM0dFT6SzKmyR").unwrap();
        bin[20] ^= 1;
        let line = <Base64 as ct_codecs::Encoder>::encode_to_string(&bin).unwrap();
        fs::write(
            dir.path().join("b.pub"),
            format!("untrusted comment: x\n{line}\n"),
        )
        .unwrap();
        assert_eq!(
            TrustedKeys::load_dir(dir.path()).unwrap_err().to_string(),
            format!(
                "{}: key id 6EB9D0A5D33D2759 is also used by {} for a different key",
                dir.path().join("b.pub").display(),
                dir.path().join("a.pub").display()
            )
        );
    }
}
