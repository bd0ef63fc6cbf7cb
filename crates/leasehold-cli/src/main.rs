//! The `leasehold` binary: a thin shell over the `leasehold` library. Parse, run, map errors to
//! exit codes (64 usage, 1 runtime, or the child's own).

mod args;
mod child;
mod http;
mod run;
mod status;
mod watchdog;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match args::parse(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return ExitCode::from(64);
        }
    };
    let code = match cli {
        args::Cli::Help => {
            print!("{}", args::HELP);
            0
        }
        args::Cli::Version => {
            println!("leasehold {}", env!("CARGO_PKG_VERSION"));
            0
        }
        args::Cli::Watchdog { pgid, grace } => watchdog::run(pgid, grace),
        args::Cli::Run(a) => block_on(run::run(*a)),
        args::Cli::Status(a) => block_on(status::status(a)),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn block_on(f: impl Future<Output = Result<i32, run::Error>>) -> i32 {
    init_tracing();
    // One thread: small RSS, and the thread that spawns the child (whose parent-death signal is
    // tied to it) lives as long as the process.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leasehold: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leasehold: {}", chain(&e));
            e.exit_code()
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    leasehold::display_chain(e)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASEHOLD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: Pod logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
