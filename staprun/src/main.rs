//! staprun: sanitize the process, then [`staprun::process::run`]. This is
//! the only place that prints (bar an abort in the privileged window).
#![forbid(unsafe_code)]

use stap_common::cli::Program;
use stap_common::color::{self, Palette};
use staprun::process::{self, Outcome, Report};
use staprun::{StaprunError, env};

fn print_error(palette: &Palette, e: &StaprunError) {
    let tag = palette.error_tag();
    eprintln!("staprun: {tag} {e}");
    if let Some(h) = e.hint() {
        eprintln!("staprun: {tag} {h}");
    }
}

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let sanitized = process::sanitize();
    // Colours for staprun's own stderr, as the C staprun: `-C`, and `TERM`
    // and `SYSTEMTAP_COLORS` of the environment captured at start-up
    // (validated: only digits and `;` reach the terminal).
    let palette = match &sanitized {
        Ok(captured) => Palette::for_stderr(
            color::mode_in_args(Program::Staprun, &args),
            env::lookup(captured, "TERM"),
            env::lookup(captured, "SYSTEMTAP_COLORS"),
        ),
        Err(_) => Palette::none(),
    };
    let warn = |msg: &str| eprintln!("staprun: {} {msg}", palette.warning_tag());
    let error = |e: &StaprunError| print_error(&palette, e);
    let report = Report {
        warn: &warn,
        error: &error,
    };
    let result = sanitized.and_then(|captured| process::run(&args, captured, &report));
    match result {
        Ok(Outcome::Print(text, code)) => {
            print!("{text}");
            std::process::exit(code);
        }
        Ok(Outcome::Exit(code)) => std::process::exit(code),
        Err(e) => {
            print_error(&palette, &e);
            std::process::exit(e.exit_code());
        }
    }
}
