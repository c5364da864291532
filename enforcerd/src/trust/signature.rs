//! Verification of detached minisign signatures over a profile's exact bytes.
//!
//! A minisign signature file is four lines:
//! 1. `untrusted comment: <text>` (not authenticated),
//! 2. base64 of `algorithm (2 bytes) || key id (8) || Ed25519 signature (64)`, where the
//!    algorithm is `ED` (signature over the BLAKE2b-512 hash of the file, minisign's default) or
//!    `Ed` (legacy: over the file itself),
//! 3. `trusted comment: <text>`,
//! 4. base64 of the Ed25519 signature over `signature || trusted comment`.
//!
//! The file is parsed here, strictly, so that a malformed one is refused saying what is wrong;
//! the cryptographic check is `minisign-verify`'s.
use std::io::Cursor;
use std::path::Path;

use super::keys::{
    TrustedKey, TrustedKeys, UNTRUSTED_COMMENT_PREFIX, decode_base64, key_id_hex, show_bytes,
};
use crate::profile::Diagnostic;

const TRUSTED_COMMENT_PREFIX: &str = "trusted comment: ";
const ALG_PREHASHED: [u8; 2] = *b"ED";
const ALG_LEGACY: [u8; 2] = super::keys::ALG_ED25519;
const SIGNATURE_LINE_BYTES: usize = 2 + 8 + 64;
const GLOBAL_SIGNATURE_BYTES: usize = 64;

/// A syntactically valid signature file.
struct Parsed<'a> {
    key_id: [u8; 8],
    untrusted_comment: &'a str,
    signature_b64: &'a str,
    trusted_comment: &'a str,
    global_signature_b64: &'a str,
}

impl Parsed<'_> {
    /// The four lines, normalized (the form handed to the verifier).
    fn canonical(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n",
            self.untrusted_comment,
            self.signature_b64,
            self.trusted_comment,
            self.global_signature_b64
        )
    }
}

/// Parses a signature file; `Err` says what is wrong with it.
fn parse(signature: &[u8]) -> Result<Parsed<'_>, String> {
    let text = std::str::from_utf8(signature).map_err(|_| "not UTF-8 text".to_string())?;
    let mut lines: Vec<&str> = text.lines().take(4).collect();
    // minisign reads four lines and ignores the rest; trailing blank lines are not lines.
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        return Err("empty file".into());
    }
    if !lines[0].starts_with(UNTRUSTED_COMMENT_PREFIX) {
        return Err(format!(
            "line 1 does not start with {UNTRUSTED_COMMENT_PREFIX:?}"
        ));
    }
    if lines.len() < 4 {
        return Err(format!("truncated: {} of 4 lines", lines.len()));
    }
    let signature_b64 = lines[1].trim();
    let bin = decode_base64(signature_b64).ok_or("line 2 (the signature) is not valid base64")?;
    if bin.len() != SIGNATURE_LINE_BYTES {
        return Err(format!(
            "line 2 (the signature) decodes to {} bytes, expected {SIGNATURE_LINE_BYTES}",
            bin.len()
        ));
    }
    if bin[..2] != ALG_PREHASHED && bin[..2] != ALG_LEGACY {
        return Err(format!(
            "unknown signature algorithm {} (expected {} or {})",
            show_bytes(&bin[..2]),
            show_bytes(&ALG_PREHASHED),
            show_bytes(&ALG_LEGACY)
        ));
    }
    if !lines[2].starts_with(TRUSTED_COMMENT_PREFIX) {
        return Err(format!(
            "line 3 does not start with {TRUSTED_COMMENT_PREFIX:?}"
        ));
    }
    let global_signature_b64 = lines[3].trim();
    let global = decode_base64(global_signature_b64)
        .ok_or("line 4 (the trusted comment signature) is not valid base64")?;
    if global.len() != GLOBAL_SIGNATURE_BYTES {
        return Err(format!(
            "line 4 (the trusted comment signature) decodes to {} bytes, expected {GLOBAL_SIGNATURE_BYTES}",
            global.len()
        ));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bin[2..10]);
    Ok(Parsed {
        key_id,
        untrusted_comment: lines[0],
        signature_b64,
        trusted_comment: lines[2],
        global_signature_b64,
    })
}

/// Verifies `signature` (the bytes of a minisign signature file) over `bytes` (the profile
/// file's exact bytes) with `keys`. Pure: no I/O. Both minisign's default (prehashed) and legacy
/// signatures are accepted, as `minisign -V` does. Returns the id of the key that signed, in hex
/// as minisign prints it. Errors name `profile` and give the reason: a malformed signature, an
/// untrusted key, content that does not match the signature (tampered), or a bad trusted comment
/// signature.
pub fn verify_signature(
    keys: &TrustedKeys,
    profile: &Path,
    bytes: &[u8],
    signature: &[u8],
) -> Result<String, Diagnostic> {
    let refuse = |message: String| Diagnostic::new(profile, None, message);
    let parsed = parse(signature).map_err(|what| refuse(format!("malformed signature: {what}")))?;
    let id = key_id_hex(&parsed.key_id);
    let Some(key) = keys.get(&parsed.key_id) else {
        return Err(refuse(format!(
            "signed by untrusted key {id} (no such key in {})",
            keys.origin().display()
        )));
    };
    let canonical = parsed.canonical();
    let sig = minisign_verify::Signature::decode(&canonical)
        .map_err(|e| refuse(format!("malformed signature: {e}")))?;
    match key.key.verify(bytes, &sig, true) {
        Ok(()) => Ok(id),
        Err(minisign_verify::Error::InvalidSignature)
            if only_comment_signature_is_bad(key, &canonical, bytes) =>
        {
            Err(refuse(format!(
                "bad trusted comment signature by key {id}: the signature's trusted comment was \
                 changed after it was signed (tampered)"
            )))
        }
        Err(minisign_verify::Error::InvalidSignature) => Err(refuse(format!(
            "does not match its signature by key {id}: the file was changed after it was signed (tampered)"
        ))),
        Err(e) => Err(refuse(format!(
            "signature by key {id} cannot be verified: {e}"
        ))),
    }
}

/// After `minisign-verify` refused a signature, tells which of its two Ed25519 signatures is
/// bad: `true` if the one over the file is good and only the one over the trusted comment is
/// bad. Only chooses the wording of a refusal, never whether to refuse.
fn only_comment_signature_is_bad(key: &TrustedKey, canonical: &str, bytes: &[u8]) -> bool {
    let (Ok(pk), Ok(sig)) = (
        minisign::PublicKey::from_base64(&key.base64),
        minisign::SignatureBox::from_string(canonical),
    ) else {
        return false;
    };
    // minisign checks the signature over the file first, then the one over the comment.
    match minisign::verify(&pk, &sig, Cursor::new(bytes), true, false, true) {
        Err(e) => e.to_string().starts_with("Comment signature"),
        Ok(()) => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trust::keys::tests::MINISIGN_PUB;
    use ct_codecs::{Base64, Encoder};

    /// `hello\n`, signed by `minisign -S` with the key of [`MINISIGN_PUB`] (prehashed).
    pub(crate) const SIGNED: &[u8] = b"hello\n";
    pub(crate) const MINISIGN_SIG: &str = "untrusted comment: signature from minisign secret key\n\
        RURZJz3TpdC5bpf0k6dBkFWJ16ReAroNmghKenYnB65WCBJ7DDQAC3+MROBwbpDNQe6LoO1/QYFIcUA1UaK7o5lEA9Zc6qNfhg0=\n\
        trusted comment: timestamp:1795464895\tfile:f.txt\thashed\n\
        a3sJ0bsAvlWjkBgfs7gnvq9/BED9GQmjrUaOB8bgib1vPci+ObKKQ/DqWf/aa81+uzpB4h9NXOeZwaQ7WmKAAQ==\n";
    /// The same with `minisign -S -l` (legacy, not prehashed).
    const MINISIGN_LEGACY_SIG: &str = "untrusted comment: signature from minisign secret key\n\
        RWRZJz3TpdC5bu4B/GQpB+IGcaAXX3J2+Qs8F+/hWAbzob+TqAYQykf/hoyAgiGkCuvDrucaYTpBFpJpYW8dY2+ZnPvDpRrXrAs=\n\
        trusted comment: timestamp:1795464895\tfile:f.txt\n\
        IsevCQtQ/mz1i+baLbEvRAC7UmysnWDZy8yz5Yjzgu4/D8ZOE5HSU1R4ImwegWn0RZUDA5ZVmwaWp46OqSOmCw==\n";
    const ID: &str = "6EB9D0A5D33D2759";
    const PROFILE: &str = "/p/web.yaml";

    fn keys() -> TrustedKeys {
        TrustedKeys::parse(Path::new("/k/test.pub"), MINISIGN_PUB).unwrap()
    }

    fn check(bytes: &[u8], sig: &[u8]) -> Result<String, String> {
        verify_signature(&keys(), Path::new(PROFILE), bytes, sig).map_err(|d| d.to_string())
    }

    fn refusal(sig: &str) -> String {
        check(SIGNED, sig.as_bytes()).unwrap_err()
    }

    /// The signature with line 2 re-encoded after `edit` changed its bytes.
    fn with_signature_bytes(edit: impl Fn(&mut Vec<u8>)) -> String {
        let lines: Vec<&str> = MINISIGN_SIG.lines().collect();
        let mut bin = decode_base64(lines[1]).unwrap();
        edit(&mut bin);
        let b64 = Base64::encode_to_string(&bin).unwrap();
        format!("{}\n{b64}\n{}\n{}\n", lines[0], lines[2], lines[3])
    }

    #[test]
    fn accepts_minisign_signatures_prehashed_and_legacy() {
        assert_eq!(check(SIGNED, MINISIGN_SIG.as_bytes()).unwrap(), ID);
        assert_eq!(check(SIGNED, MINISIGN_LEGACY_SIG.as_bytes()).unwrap(), ID);
        // CRLF line ends, trailing blank lines and an edited untrusted comment change nothing.
        assert_eq!(
            check(SIGNED, MINISIGN_SIG.replace('\n', "\r\n").as_bytes()).unwrap(),
            ID
        );
        assert_eq!(
            check(SIGNED, format!("{MINISIGN_SIG}\n\n").as_bytes()).unwrap(),
            ID
        );
        let relabeled = MINISIGN_SIG.replace("signature from minisign secret key", "anything");
        assert_eq!(check(SIGNED, relabeled.as_bytes()).unwrap(), ID);
    }

    #[test]
    fn refusal_malformed_garbage() {
        assert_eq!(
            refusal("garbage"),
            "/p/web.yaml: malformed signature: line 1 does not start with \"untrusted comment: \""
        );
        assert_eq!(refusal(""), "/p/web.yaml: malformed signature: empty file");
        assert_eq!(
            refusal("\n \n"),
            "/p/web.yaml: malformed signature: empty file"
        );
        assert_eq!(
            check(SIGNED, &[0xff, 0x00, 0x12]).unwrap_err(),
            "/p/web.yaml: malformed signature: not UTF-8 text"
        );
        // A public key instead of a signature.
        assert_eq!(
            refusal(MINISIGN_PUB),
            "/p/web.yaml: malformed signature: truncated: 2 of 4 lines"
        );
    }

    #[test]
    fn refusal_malformed_truncated() {
        let lines: Vec<&str> = MINISIGN_SIG.lines().collect();
        assert_eq!(
            refusal(&lines[..2].join("\n")),
            "/p/web.yaml: malformed signature: truncated: 2 of 4 lines"
        );
        assert_eq!(
            refusal(&lines[..3].join("\n")),
            "/p/web.yaml: malformed signature: truncated: 3 of 4 lines"
        );
        // Cut in the middle of line 4 and of line 2.
        assert_eq!(
            refusal(&MINISIGN_SIG[..MINISIGN_SIG.len() - 20]),
            "/p/web.yaml: malformed signature: line 4 (the trusted comment signature) is not valid base64"
        );
        let cut = format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            &lines[1][..40],
            lines[2],
            lines[3]
        );
        assert_eq!(
            refusal(&cut),
            "/p/web.yaml: malformed signature: line 2 (the signature) decodes to 30 bytes, expected 74"
        );
        let short = with_signature_bytes(|b| b.truncate(73));
        assert_eq!(
            refusal(&short),
            "/p/web.yaml: malformed signature: line 2 (the signature) decodes to 73 bytes, expected 74"
        );
        let short_global = format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            lines[1],
            lines[2],
            Base64::encode_to_string([7u8; 32]).unwrap()
        );
        assert_eq!(
            refusal(&short_global),
            "/p/web.yaml: malformed signature: line 4 (the trusted comment signature) decodes to 32 bytes, expected 64"
        );
    }

    #[test]
    fn refusal_malformed_wrong_algorithm_bytes() {
        let sig = with_signature_bytes(|b| b[..2].copy_from_slice(b"EX"));
        assert_eq!(
            refusal(&sig),
            "/p/web.yaml: malformed signature: unknown signature algorithm \"EX\" (expected \"ED\" or \"Ed\")"
        );
        let sig = with_signature_bytes(|b| b[..2].copy_from_slice(&[0, 1]));
        assert_eq!(
            refusal(&sig),
            "/p/web.yaml: malformed signature: unknown signature algorithm 0x0001 (expected \"ED\" or \"Ed\")"
        );
        // Switching ED <-> Ed is not malformed, but the signature no longer matches.
        let sig = with_signature_bytes(|b| b[..2].copy_from_slice(b"Ed"));
        assert_eq!(
            refusal(&sig),
            format!(
                "/p/web.yaml: does not match its signature by key {ID}: the file was changed after it was signed (tampered)"
            )
        );
        let bad_prefix = MINISIGN_SIG.replace("trusted comment: timestamp", "trusted: timestamp");
        assert_eq!(
            refusal(&bad_prefix),
            "/p/web.yaml: malformed signature: line 3 does not start with \"trusted comment: \""
        );
    }

    #[test]
    fn refusal_untrusted_key() {
        let other = "untrusted comment: minisign public key 9F8E0B41A87572FA\n\
            RWT6cnWoQQuOnws1QMN9NokeGRR3CeLSoxQz/WSxDMnDaaeQxbysnJRC\n";
        let keys = TrustedKeys::parse(Path::new("/k/other.pub"), other).unwrap();
        let e = verify_signature(&keys, Path::new(PROFILE), SIGNED, MINISIGN_SIG.as_bytes())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("/p/web.yaml: signed by untrusted key {ID} (no such key in /k/other.pub)")
        );
        let empty = tempfile::tempdir().unwrap();
        let none = TrustedKeys::load_dir(empty.path()).unwrap();
        let e = verify_signature(&none, Path::new(PROFILE), SIGNED, MINISIGN_SIG.as_bytes())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "/p/web.yaml: signed by untrusted key {ID} (no such key in {})",
                empty.path().display()
            )
        );
    }

    #[test]
    fn refusal_tampered_one_flipped_byte() {
        for i in 0..SIGNED.len() {
            let mut tampered = SIGNED.to_vec();
            tampered[i] ^= 0x01;
            for sig in [MINISIGN_SIG, MINISIGN_LEGACY_SIG] {
                assert_eq!(
                    check(&tampered, sig.as_bytes()).unwrap_err(),
                    format!(
                        "/p/web.yaml: does not match its signature by key {ID}: the file was changed \
                         after it was signed (tampered)"
                    )
                );
            }
        }
        // A byte appended or removed, too.
        assert!(
            check(b"hello\n\n", MINISIGN_SIG.as_bytes())
                .unwrap_err()
                .contains("(tampered)")
        );
        assert!(
            check(b"hello", MINISIGN_SIG.as_bytes())
                .unwrap_err()
                .contains("(tampered)")
        );
    }

    #[test]
    fn refusal_bad_trusted_comment_signature() {
        let edited = MINISIGN_SIG.replace("timestamp:1795464895", "timestamp:1795464896");
        assert_eq!(
            refusal(&edited),
            format!(
                "/p/web.yaml: bad trusted comment signature by key {ID}: the signature's trusted \
                 comment was changed after it was signed (tampered)"
            )
        );
        // Both changed: the file's mismatch is reported, as minisign does.
        assert!(
            check(b"hellO\n", edited.as_bytes())
                .unwrap_err()
                .contains("does not match its signature")
        );
    }

    #[test]
    fn every_bit_flip_in_the_authenticated_lines_is_refused() {
        let sig = MINISIGN_SIG.as_bytes();
        let start = MINISIGN_SIG.find('\n').unwrap() + 1;
        for i in start..sig.len() - 1 {
            for bit in 0..8 {
                let mut s = sig.to_vec();
                s[i] ^= 1 << bit;
                assert!(
                    check(SIGNED, &s).is_err(),
                    "flip of bit {bit} at {i} accepted"
                );
            }
        }
    }
}
