//! Everything that touches the kernel's BPF machinery: checking that the kernel can enforce,
//! reading struct layouts from its BTF, loading and attaching the programs, writing the maps.
pub mod btf;
pub mod loader;
pub mod pins;
pub mod preflight;
pub mod rcu;

pub use loader::Enforcer;
