//! enforcerd: runtime security enforcement with BPF LSM.
//!
//! The data flow, one module per step:
//! profile YAML --[`profile`]--> validated `Profile` --[`trust`]--> trusted profile
//! --[`workload`]--> cgroup ids --[`compile`]--> typed map entries --[`kernel`]--> BPF maps;
//! kernel decisions --[`report`]--> JSON lines, journal, `enforcerd events`, [`metrics`]. [`daemon`] wires it; [`cli`] is the shell.
pub mod cli;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod kernel;
pub mod kubernetes;
pub mod metrics;
pub mod paths;
pub mod privileges;
pub mod profile;
pub mod reconcile;
pub mod report;
pub mod trust;
pub mod workload;
