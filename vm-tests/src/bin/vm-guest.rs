//! The guest runner: `/init` starts it inside the test VM. See `vm_tests::guest`.

fn main() -> std::process::ExitCode {
    // The benchmark's exec target (`vm-guest exit`): an allowed, dynamically linked binary
    // that does nothing, so the exec loop times the exec and not the program.
    if std::env::args_os().nth(1).is_some_and(|a| a == "exit") {
        return std::process::ExitCode::SUCCESS;
    }
    vm_tests::guest::main()
}
