//! The default configuration the packages install (`packaging/enforcerd.yaml`) must change
//! nothing as shipped, and every commented-out key in it must be a real key with its real
//! default, so that uncommenting a line does what the comment says.
use std::path::{Path, PathBuf};

use enforcerd::{
    cli::Config,
    daemon::{self, DecisionsTo, NodeDefault, OnStop},
    paths,
};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/enforcerd.yaml")
}

#[test]
fn shipped_config_is_all_defaults() {
    let config = Config::load(Some(&shipped())).expect("the shipped config parses");
    assert_eq!(config, Config::default());
}

#[test]
fn every_commented_key_is_real_and_documents_its_default() {
    let text = std::fs::read_to_string(shipped()).unwrap();
    // A commented-out setting is `#key: value` (no space after `#`); prose comments have one.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enforcerd.yaml");
    std::fs::write(&file, &uncommented).unwrap();
    let config = Config::load(Some(&file)).expect("the uncommented config parses");
    let window = u64::try_from(daemon::DEFAULT_AGGREGATION_WINDOW.as_millis()).unwrap();
    assert_eq!(
        config,
        Config {
            profiles: Some(paths::PROFILES_DIR.into()),
            trusted_keys: Some(paths::TRUSTED_KEYS_DIR.into()),
            audit: false,
            allow_unsigned: false,
            // The one example that is not the default: metrics are off unless set.
            metrics_address: Some("127.0.0.1:9478".parse().unwrap()),
            aggregate_window: Some(window),
            history: Some(daemon::DEFAULT_HISTORY),
            decisions: Some(DecisionsTo::default()),
            node_default: Some(NodeDefault::default()),
            on_stop: Some(OnStop::default()),
            pin_dir: Some(paths::BPFFS_DIR.into()),
        }
    );
}
