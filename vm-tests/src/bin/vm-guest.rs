//! The guest runner: `/init` starts it inside the test VM. See `vm_tests::guest`.

fn main() -> std::process::ExitCode {
    vm_tests::guest::main()
}
