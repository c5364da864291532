//! Builds the BPF programs (`lsm-ebpf`) with the pinned nightly and bpf-linker, so that a plain
//! `cargo build` yields one self-contained `enforcerd` binary that embeds them.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lsm-ebpf")
        .ok_or_else(|| anyhow!("lsm-ebpf package not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    let toolchain = std::fs::read_to_string(root_dir.join("rust-toolchain.toml"))
        .context("reading lsm-ebpf/rust-toolchain.toml")?;
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"').to_owned())
        .ok_or_else(|| anyhow!("no channel in lsm-ebpf/rust-toolchain.toml"))?;

    // Unit tests of the pure logic do not need the BPF object: AYA_BUILD_SKIP=1 embeds an empty
    // one, and the daemon then refuses to start with a clear message.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let skip = matches!(
        std::env::var("AYA_BUILD_SKIP").as_deref(),
        Ok("1") | Ok("true")
    );
    // Passed on to the BPF build (see lsm-ebpf's BUILD_MARK): rebuild when it changes.
    println!("cargo:rerun-if-env-changed=ENFORCERD_BPF_BUILD");
    if skip {
        std::fs::write(out_dir.join("lsm-ebpf"), b"")?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
}
