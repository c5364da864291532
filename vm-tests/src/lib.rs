//! The VM test harness for enforcerd.
//!
//! * [`host`]: the `vm-tests` binary's side. Builds an initramfs (busybox, `enforcerd`,
//!   `vm-guest` and their shared libraries), boots every kernel of the matrix under QEMU and
//!   turns the guest's console output into a report.
//! * [`guest`]: the `vm-guest` binary, run by the VM's `/init`. Runs the scenarios and prints
//!   one result line per check.
//! * [`protocol`]: the result lines both sides agree on; [`catalog`]: the scenario list.

pub mod bench;
pub mod catalog;
pub mod guest;
pub mod host;
pub mod protocol;
pub mod unit_capabilities;
