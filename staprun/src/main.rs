//! staprun: sanitize the process, then [`staprun::process::run`]. This is
//! the only place that prints (bar an abort in the privileged window).
#![forbid(unsafe_code)]

use staprun::StaprunError;
use staprun::process::{self, Outcome, Report};

fn print_error(e: &StaprunError) {
    eprintln!("staprun: ERROR: {e}");
    if let Some(h) = e.hint() {
        eprintln!("staprun: ERROR: {h}");
    }
}

fn main() {
    let report = Report {
        warn: &|msg| eprintln!("staprun: WARNING: {msg}"),
        error: &print_error,
    };
    let result = process::sanitize().and_then(|captured| {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        process::run(&args, captured, &report)
    });
    match result {
        Ok(Outcome::Print(text, code)) => {
            print!("{text}");
            std::process::exit(code);
        }
        Ok(Outcome::Exit(code)) => std::process::exit(code),
        Err(e) => {
            print_error(&e);
            std::process::exit(e.exit_code());
        }
    }
}
