fn main() -> std::process::ExitCode {
    uring_bt::cli::main()
}
