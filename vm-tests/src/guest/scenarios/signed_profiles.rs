//! signed_profiles: without `--allow-unsigned` only a profile whose `X.yaml.sig` verifies with
//! a trusted key is enforced. A missing signature, a signature by an untrusted key, a profile
//! changed after signing and a malformed signature are each refused by `enforcerd check` and
//! by the daemon, which names the file and the reason and applies nothing from it, while the
//! validly signed profile next to them is enforced.

use crate::guest::daemon::{ENFORCERD, run_command, status_json};
use crate::guest::fixtures::{
    self, CONNECT_ALLOW_ALL, EXEC_ALLOW_ALL, SigningKey, json_str, sig_path,
};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, open_op};
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::path::Path;

const DENIED: &str = "/srv/signed/denied";

/// One way a profile fails verification, and the words its refusal must contain.
struct Bad {
    kind: &'static str,
    reason: &'static str,
}

const BAD: &[Bad] = &[
    Bad {
        kind: "unsigned",
        reason: "missing signature",
    },
    Bad {
        kind: "untrusted_key",
        reason: "untrusted key",
    },
    Bad {
        kind: "tampered",
        reason: "does not match its signature",
    },
    Bad {
        kind: "malformed_signature",
        reason: "malformed signature",
    },
];

/// A profile that denies reading and writing [`DENIED`] in `cgroup`. The trailing comment gives
/// [`fixtures::flip_byte_after`] a byte to flip without making the document invalid.
fn document(name: &str, cgroup: &str) -> String {
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {DENIED}, access: [read, write], action: deny}}
{CONNECT_ALLOW_ALL}"
    );
    let mut doc = fixtures::profile(name, cgroup, "enforce", "deny", &body);
    doc.push_str("# revision 1\n");
    doc
}

/// `enforcerd check --trusted-keys KEYS --json FILE`: the exit status, the JSON object for
/// the file (if printed) and everything printed.
fn check_json(keys: &Path, file: &Path) -> Result<(Option<i32>, Option<Value>, String)> {
    let keys = keys.to_str().context("path")?;
    let file = file.to_str().context("path")?;
    let out = run_command(
        ENFORCERD,
        &["check", "--trusted-keys", keys, "--json", file],
    );
    let object = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| json_str(v, "file") == file);
    Ok((out.code, object, out.summary()))
}

fn problems(v: &Value) -> Vec<String> {
    fixtures::json_strings(&v["problems"])
}

pub fn only_profiles_signed_by_a_trusted_key_are_enforced(ctx: &mut Ctx) -> Result<()> {
    fixtures::write(DENIED, "signed\n", 0o644)?;

    let signer = SigningKey::named("signer");
    let out = signer.generate();
    let public = std::fs::read_to_string(&signer.public).unwrap_or_default();
    let made = out.code == Some(0)
        && Path::new(&signer.secret).is_file()
        && public.starts_with("untrusted comment:")
        && public.lines().count() == 2;
    ctx.check(
        "keygen_writes_a_minisign_key_pair",
        made,
        format!(
            "exit 0, {} and {} (2 lines, \"untrusted comment: ...\")",
            signer.secret, signer.public
        ),
        format!("{}\n{}: {public:?}", out.summary(), signer.public),
        None,
    );
    if !made {
        bail!("no signing key");
    }
    let rogue = SigningKey::named("rogue");
    let out = rogue.generate();
    if out.code != Some(0) {
        bail!("enforcerd keygen (second key) failed: {}", out.summary());
    }
    let trusted = fixtures::trusted_dir("signed_profiles", &[&signer])?;
    ctx.note(&format!(
        "trusted keys: {} (only {}.pub); {} is not trusted",
        trusted.display(),
        signer.name,
        rogue.public
    ));

    // A validly signed profile alone.
    let cg = Cgroup::create("/signed_profiles")?;
    let dir = fixtures::profile_dir("signed_profiles")?;
    let good_doc = document("signed-good", &cg.rel);
    let good = fixtures::write_profile(&dir, "good.yaml", &good_doc)?;
    fixtures::sign(&signer, &[&good])?;
    let (code, object, printed) = check_json(&trusted, &good)?;
    let ok = code == Some(0)
        && object.as_ref().is_some_and(|v| {
            v.get("ok") == Some(&Value::Bool(true))
                && json_str(v, "profile") == "signed-good"
                && fixtures::is_sha256_ref(json_str(v, "sha256"))
        });
    ctx.check(
        "check_accepts_signed_profile",
        ok,
        format!(
            "exit 0, {{\"file\":\"{}\",\"ok\":true,\"profile\":\"signed-good\",\"sha256\":\"sha256:...\"}}",
            good.display()
        ),
        printed,
        None,
    );
    ctx.start_daemon_trusting(&dir, &trusted, "daemon_ready_with_trusted_keys")?;
    let r = ctx.op(Some(&cg), &format!("open({DENIED}, O_RDONLY)"), || {
        open_op(DENIED, libc::O_RDONLY)
    });
    ctx.expect("signed_profile_enforced", &Outcome::EPERM, &r);
    ctx.stop_daemon("daemon_stops_on_sigterm");

    // The same profile next to four that must be refused.
    let mixed = fixtures::profile_dir("signed_profiles_mixed")?;
    let good = fixtures::write_profile(&mixed, "good.yaml", &good_doc)?;
    fixtures::sign(&signer, &[&good])?;
    let mut refused = Vec::new();
    for bad in BAD {
        let cg = Cgroup::create(&format!("/signed_profiles_{}", bad.kind))?;
        let file = fixtures::write_profile(
            &mixed,
            &format!("{}.yaml", bad.kind.replace('_', "-")),
            &document(&format!("signed-{}", bad.kind.replace('_', "-")), &cg.rel),
        )?;
        match bad.kind {
            "unsigned" => {}
            "untrusted_key" => fixtures::sign(&rogue, &[&file])?,
            "tampered" => {
                fixtures::sign(&signer, &[&file])?;
                fixtures::flip_byte_after(&file, "# ")?;
            }
            "malformed_signature" => {
                fixtures::sign(&signer, &[&file])?;
                // Cut the signature line in half, as an interrupted copy would.
                let sig = sig_path(&file);
                let text = std::fs::read_to_string(&sig)?;
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                if lines.len() < 2 {
                    bail!("{} has fewer than 2 lines:\n{text}", sig.display());
                }
                let half = lines[1].len() / 2;
                lines[1].truncate(half);
                std::fs::write(&sig, format!("{}\n", lines.join("\n")))?;
            }
            other => bail!("no setup for {other}"),
        }
        let (code, object, printed) = check_json(&trusted, &file)?;
        let found = object
            .as_ref()
            .map(problems)
            .unwrap_or_default()
            .iter()
            .any(|p| p.contains(bad.reason));
        ctx.check(
            &format!("check_refuses_{}", bad.kind),
            code == Some(1)
                && found
                && object
                    .as_ref()
                    .is_some_and(|v| v.get("ok") == Some(&Value::Bool(false))),
            format!(
                "exit 1, {{\"file\":\"{}\",\"ok\":false,\"problems\":[\"...{}...\"]}}",
                file.display(),
                bad.reason
            ),
            printed,
            None,
        );
        refused.push((bad, cg, file));
    }

    ctx.start_daemon_trusting(&mixed, &trusted, "daemon_ready_next_to_refused_profiles")?;
    let r = ctx.op(Some(&cg), &format!("open({DENIED}, O_RDONLY)"), || {
        open_op(DENIED, libc::O_RDONLY)
    });
    ctx.expect(
        "signed_profile_enforced_next_to_refused_ones",
        &Outcome::EPERM,
        &r,
    );
    let status = status_json();
    let reported: Vec<String> = status
        .as_ref()
        .map(|s| s.get("last_reload").map(problems).unwrap_or_default())
        .unwrap_or_default();
    let stderr = ctx.daemon.as_ref().map(|d| d.stderr()).unwrap_or_default();
    for (bad, cg, file) in &refused {
        let r = ctx.op(
            Some(cg),
            &format!("open({DENIED}, O_RDONLY) under the {} profile", bad.kind),
            || open_op(DENIED, libc::O_RDONLY),
        );
        ctx.expect(
            &format!("nothing_applied_from_{}_profile", bad.kind),
            &Outcome::Ok,
            &r,
        );
        let file = file.display().to_string();
        let in_status: Vec<&String> = reported.iter().filter(|p| p.contains(&file)).collect();
        let in_stderr: Vec<&str> = stderr.lines().filter(|l| l.contains(&file)).collect();
        let ok = in_status.iter().any(|p| p.contains(bad.reason))
            && in_stderr
                .iter()
                .any(|l| l.contains("refused") && l.contains(bad.reason));
        ctx.check(
            &format!("daemon_refuses_{}_naming_file_and_reason", bad.kind),
            ok,
            format!(
                "status last_reload.problems and stderr (\"refused {file}: ...\") name {file}: ...{}...",
                bad.reason
            ),
            format!(
                "status: {}\nstderr: {}",
                match &status {
                    Ok(_) if in_status.is_empty() => "no problem names the file".to_owned(),
                    Ok(_) => in_status
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n        "),
                    Err(e) => e.clone(),
                },
                if in_stderr.is_empty() {
                    "no line names the file".to_owned()
                } else {
                    in_stderr.join("\n        ")
                }
            ),
            None,
        );
    }
    let names: Vec<String> = status
        .as_ref()
        .ok()
        .and_then(|s| s.get("profiles"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|p| json_str(p, "name").to_owned()).collect())
        .unwrap_or_default();
    ctx.check(
        "status_lists_only_the_signed_profile",
        names == ["signed-good"],
        "profiles: [signed-good]",
        match &status {
            Ok(_) => format!("profiles: [{}]", names.join(", ")),
            Err(e) => e.clone(),
        },
        None,
    );
    ctx.stop_daemon("daemon_with_refused_profiles_stops_on_sigterm");
    Ok(())
}
