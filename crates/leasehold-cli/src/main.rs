//! The `leasehold` binary: a thin shell over the `leasehold` library. Parse, run, map errors to
//! exit codes (64 usage, 1 runtime, or the child's own).

/// Writes a line to stdout for whoever reads it, and carries on if nobody does: a closed pipe
/// (`leasehold run ... | head -1`) must not abort the process while it holds the lease, or
/// skip the release. Everything said here is also logged on stderr or is `status` output.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

mod args;
mod child;
#[cfg(feature = "etcd")]
mod etcd;
mod health;
mod http;
mod route;
mod run;
mod status;
mod step_down;
mod supervisor;
mod watchdog;

use std::process::ExitCode;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
            say!("{}", args::HELP.trim_end());
            0
        }
        args::Cli::Version => {
            say!("leasehold {}", env!("CARGO_PKG_VERSION"));
            0
        }
        args::Cli::Watchdog { pgid, grace } => watchdog::run(pgid, grace),
        args::Cli::Run(a) => block_on(run::run(*a)),
        args::Cli::Status(a) => block_on(status::status(a)),
        args::Cli::StepDown(a) => block_on(async move {
            step_down::step_down(a)
                .await
                .map_err(|e| run::Error::StepDown(Box::new(e)))
        }),
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

/// Log filter from `LEASEHOLD_LOG`: a level (`debug`) or `target=level` pairs
/// (`info,leasehold=debug`). `Targets` rather than `EnvFilter`: it parses the same common forms
/// without the regex engine, which was a tenth of the binary, and a sidecar's binary size is
/// its resident memory (docs/benchmarks.md).
///
/// `Targets` reads a bare word as a target to log at every level, so `warning` would silently
/// turn off all logging except a target of that name. A bare word must be a level here; a
/// target at every level is `target=trace`.
fn log_filter(var: Option<&str>) -> Result<Targets, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let v = match var.map(str::trim) {
        None | Some("") => return Ok(Targets::new().with_default(LevelFilter::INFO)),
        Some(v) => v,
    };
    let bad = |why: String| {
        format!(
            "LEASEHOLD_LOG={v:?} is not a log filter ({why}); expected a level such as `debug` or `info,leasehold=debug`"
        )
    };
    if let Some(word) = v.split(',').map(str::trim).find(|d| {
        !d.is_empty() && !d.contains('=') && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
    }) {
        return Err(bad(format!(
            "`{word}` is not a level: {}",
            LEVELS.join(", ")
        )));
    }
    v.parse::<Targets>().map_err(|e| bad(e.to_string()))
}

fn init_tracing() {
    let var = std::env::var("LEASEHOLD_LOG").ok();
    let filter = log_filter(var.as_deref()).unwrap_or_else(|e| {
        // Logging is no reason to refuse to run; say what was ignored.
        eprintln!("leasehold: {e}; ignoring it and logging at info");
        Targets::new().with_default(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only on a terminal: Pod logs and files get plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn log_filter_takes_levels_and_targets_and_names_bad_input() {
        assert!(log_filter(None).is_ok());
        assert!(log_filter(Some("debug")).is_ok());
        assert!(log_filter(Some("info,leasehold=debug,kube=warn")).is_ok());
        assert!(log_filter(Some("WARN")).is_ok());
        let e = log_filter(Some("leasehold=loud")).unwrap_err();
        assert!(e.contains("LEASEHOLD_LOG=\"leasehold=loud\""), "{e}");
        // A bare word that is not a level would otherwise be a target name, silencing the rest.
        for bad in ["warning", "bogus", "info,verbose"] {
            let e = log_filter(Some(bad)).unwrap_err();
            assert!(
                e.contains("is not a level: off, error, warn, info, debug, trace"),
                "{e}"
            );
        }
    }
}
