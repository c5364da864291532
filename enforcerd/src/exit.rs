//! Exit codes (spec: 0 success, 1 refused input, 2 usage error, 3 the kernel cannot enforce).
use std::process::ExitCode;

pub const SUCCESS: u8 = 0;
/// A refused input: bad profile, bad signature.
pub const REFUSED: u8 = 1;
/// A usage error (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// The kernel cannot enforce: no BPF LSM, no BTF, not root.
pub const CANNOT_ENFORCE: u8 = 3;

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}
