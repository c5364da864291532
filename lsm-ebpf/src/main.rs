//! enforcerd's BPF LSM programs. Each entry point finds the calling task's profile by its
//! cgroup (nearest governed ancestor), looks the operation up in that profile's rule trie
//! (one longest-prefix lookup), and allows, denies (`-EPERM`), kills (`SIGKILL` + `-EPERM`) or,
//! in audit mode, allows and reports. Tasks in no governed cgroup cost a few map lookups.
#![no_std]
// Atomic adds on map values (see `decide::atomic_add`).
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod aliases;
mod cgroups;
mod decide;
mod file_verdicts;
mod maps;
mod offsets;
mod path_walk;
mod programs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
