fn main() -> std::process::ExitCode {
    enforcerd::cli::main()
}
