//! Signature verifier: arbitrary (profile bytes, signature bytes) pairs against a fixed trusted
//! key.
//!
//! Input layout: a little-endian `u16` N, then the profile (the next N bytes, or all that is
//! left when fewer), then the signature file (the rest). The same signature bytes, read as
//! text, are also parsed as a public key file.
//!
//! `verify_signature` must return a key id or a diagnostic, never panic. The only profile ever
//! signed with the key below is `profiles/web-frontend.yaml` as of the seeds (its SHA-256 is
//! `SIGNED_SHA256`): accepting any other bytes would be a forgery.
//!
//! The seeds in `fuzz/seeds/signature/` were made with the `minisign` tool (`minisign -G -W`,
//! then `minisign -S`, and `minisign -S -l` for a legacy signature) with the key pair whose
//! public half is `PUBKEY_TEXT`, plus a signature by a second, untrusted key. The secret keys
//! were not kept: to add a signed seed, make a new key pair and update both constants.
#![no_main]

use std::path::Path;

use enforcerd::profile::{self, Diagnostic};
use enforcerd::trust::{TrustedKeys, verify_signature};
use libfuzzer_sys::fuzz_target;

const PUBKEY_TEXT: &str = "untrusted comment: minisign public key 832016F1F2120387
RWSHAxLy8RYggwC70PAZTmOlPJ4tPu/bHJ97GDk2kc/XwHLBA166UM+0
";
const KEY_ID: &str = "832016F1F2120387";
const SIGNED_SHA256: &str =
    "sha256:144267ffa0dd69eeb232ea681446c3fb89d3691aa6f76e64aecdeb80df9464ae";

const PROFILE: &str = "fuzz.yaml";
const KEY_FILE: &str = "k.pub";

fuzz_target!(|data: &[u8]| {
    let keys = TrustedKeys::parse(Path::new(KEY_FILE), PUBKEY_TEXT)
        .unwrap_or_else(|d| panic!("the embedded public key is refused: {d}"));
    assert_eq!(keys.key_ids(), [KEY_ID]);

    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let (profile, signature) = rest.split_at(len.min(rest.len()));

    match verify_signature(&keys, Path::new(PROFILE), profile, signature) {
        Ok(key_id) => {
            assert_eq!(
                key_id, KEY_ID,
                "accepted under a key id that is not trusted"
            );
            assert_eq!(
                profile::sha256(profile),
                SIGNED_SHA256,
                "accepted a signature over bytes that were never signed"
            );
        }
        Err(d) => check_diagnostic(&d, &[PROFILE]),
    }

    if let Ok(text) = std::str::from_utf8(signature) {
        match TrustedKeys::parse(Path::new(KEY_FILE), text) {
            Ok(parsed) => assert_eq!(parsed.len(), 1, "one key file, {} keys", parsed.len()),
            Err(d) => check_diagnostic(&d, &[KEY_FILE]),
        }
    }
});

fn check_diagnostic(d: &Diagnostic, files: &[&str]) {
    let shown = d.to_string();
    assert!(
        files.iter().any(|f| d.file == Path::new(f)),
        "diagnostic names another file: {shown}"
    );
    assert!(!d.message.is_empty(), "diagnostic without a message");
    if let Some(line) = d.line {
        assert!(line >= 1, "line not 1-based: {shown}");
    }
    if let Some(column) = d.column {
        assert!(column >= 1, "column not 1-based: {shown}");
    }
}
