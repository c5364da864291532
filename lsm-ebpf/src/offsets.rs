//! Kernel struct field offsets. Rust BPF has no CO-RE relocations, so the daemon reads these
//! from the running kernel's BTF and sets them before load. They live in `.rodata`, which the
//! loader freezes, so the verifier sees constants (a mutable global would make pointer
//! arithmetic with them unverifiable).
use core::ptr::read_volatile;

#[unsafe(no_mangle)]
static OFF_BPRM_FILE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_F_PATH: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_F_FLAGS: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_F_MODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SOCKET_TYPE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_REAL_PARENT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u64 = 0;

// `read_volatile` keeps the compiler from folding the placeholder zeros into the code.
#[inline(always)]
pub fn bprm_file() -> usize {
    unsafe { read_volatile(&OFF_BPRM_FILE) as usize }
}
#[inline(always)]
pub fn file_f_path() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_PATH) as usize }
}
#[inline(always)]
pub fn file_f_flags() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_FLAGS) as usize }
}
#[inline(always)]
pub fn file_f_mode() -> usize {
    unsafe { read_volatile(&OFF_FILE_F_MODE) as usize }
}
#[inline(always)]
pub fn socket_type() -> usize {
    unsafe { read_volatile(&OFF_SOCKET_TYPE) as usize }
}
#[inline(always)]
pub fn task_real_parent() -> usize {
    unsafe { read_volatile(&OFF_TASK_REAL_PARENT) as usize }
}
#[inline(always)]
pub fn task_tgid() -> usize {
    unsafe { read_volatile(&OFF_TASK_TGID) as usize }
}
