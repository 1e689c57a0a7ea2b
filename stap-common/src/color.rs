//! SystemTap's coloured `ERROR:`/`WARNING:` tags, as the C tools print
//! them (staprun/common.c `parse_stap_color`, staprun.h `print_stderr`).
//!
//! * Whether to colour: `-C always`; `-C never`; `-C auto` (the default)
//!   when stderr is a terminal and `TERM` is not `dumb` (an unset `TERM`
//!   counts as not dumb, as in C). `TERM` matters only for `auto`.
//! * Which colour: the SGR parameters of the key `error` or `warning` in
//!   `SYSTEMTAP_COLORS` (`key=value:key=value...`; default
//!   [`DEFAULT_COLORS`]). The value is found by scanning the entries in
//!   order: an entry without `=`, with an empty key or value, or with a
//!   value holding anything but digits and `;` ends the scan with no
//!   colour; the first entry whose key matches gives it. A set but empty
//!   `SYSTEMTAP_COLORS` turns colour off.
//! * How: `ESC[<sgr>m ESC[K` + tag + `ESC[m ESC[K`, then a space and the
//!   message.
//!
//! The value reaches the terminal only as digits and `;` between fixed
//! escape bytes, so staprun may take it from the environment it captured
//! while privileged: it changes nothing but the look of its own stderr.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::IsTerminal;

use crate::cli::{self, ColorMode, Program};

/// The C tools' palette when `SYSTEMTAP_COLORS` is not set.
pub const DEFAULT_COLORS: &str = "error=01;31:warning=00;33:source=00;34:caret=01:token=01";

/// The SGR parameters `SYSTEMTAP_COLORS` (`colors`, `None` when unset)
/// gives `key` (`error`, `warning`, `source`, `caret`, `token`), as C's
/// `parse_stap_color`; `None`: no colour for that key.
pub fn sgr_for(colors: Option<&str>, key: &str) -> Option<String> {
    let spec = colors.unwrap_or(DEFAULT_COLORS);
    if spec.is_empty() {
        return None;
    }
    for entry in spec.split(':') {
        let (k, v) = entry.split_once('=')?;
        if k.is_empty() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit() || b == b';') {
            return None;
        }
        if k == key {
            return Some(v.to_owned());
        }
    }
    None
}

/// Whether messages on stderr are coloured, as C decides it.
pub fn wanted(mode: ColorMode, stderr_is_tty: bool, term: Option<&str>) -> bool {
    match mode {
        ColorMode::Never => false,
        ColorMode::Always => true,
        ColorMode::Auto => stderr_is_tty && term != Some("dumb"),
    }
}

/// The `-C` mode in effect for a message printed while parsing `args`
/// (argv without argv\[0\]): the last valid `-C` before any invalid one
/// (C sets the mode option by option and stops at a bad value), `auto`
/// when there is none or the command line cannot be read at all.
pub fn mode_in_args(program: Program, args: &[OsString]) -> ColorMode {
    let Some(args) = args
        .iter()
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
    else {
        return ColorMode::Auto;
    };
    let Ok(canonical) = cli::normalize(program, &args) else {
        return ColorMode::Auto;
    };
    let mut mode = ColorMode::Auto;
    for a in canonical.iter().skip(1).take_while(|a| *a != "--") {
        if let Some(v) = a.strip_prefix("--color=") {
            mode = match v {
                "never" => ColorMode::Never,
                "auto" => ColorMode::Auto,
                "always" => ColorMode::Always,
                _ => break,
            };
        }
    }
    mode
}

/// The escape sequences of the two tags, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Palette {
    error: Option<String>,
    warning: Option<String>,
}

impl Palette {
    /// No colour.
    pub fn none() -> Palette {
        Palette::default()
    }

    /// Colour from `SYSTEMTAP_COLORS` (`None`: unset, the default palette).
    pub fn from_colors(colors: Option<&str>) -> Palette {
        Palette {
            error: sgr_for(colors, "error"),
            warning: sgr_for(colors, "warning"),
        }
    }

    /// The palette for a stderr that is (or is not) a terminal.
    pub fn new(
        mode: ColorMode,
        stderr_is_tty: bool,
        term: Option<&str>,
        colors: Option<&str>,
    ) -> Palette {
        if wanted(mode, stderr_is_tty, term) {
            Palette::from_colors(colors)
        } else {
            Palette::none()
        }
    }

    /// The palette for this process's stderr.
    pub fn for_stderr(mode: ColorMode, term: Option<&str>, colors: Option<&str>) -> Palette {
        Palette::new(mode, std::io::stderr().is_terminal(), term, colors)
    }

    /// Whether any tag is coloured.
    pub fn is_colored(&self) -> bool {
        self.error.is_some() || self.warning.is_some()
    }

    /// `ERROR:`, coloured or not.
    pub fn error_tag(&self) -> String {
        paint(self.error.as_deref(), "ERROR:")
    }

    /// `WARNING:`, coloured or not.
    pub fn warning_tag(&self) -> String {
        paint(self.warning.as_deref(), "WARNING:")
    }
}

fn paint(sgr: Option<&str>, tag: &str) -> String {
    match sgr {
        Some(s) => format!("\x1b[{s}m\x1b[K{tag}\x1b[m\x1b[K"),
        None => tag.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// testsuite/systemtap.base/color_parsing.exp: SYSTEMTAP_COLORS and the
    /// SGR parameters of `error` ("" = no colour).
    const COLOR_PARSING: &[(&str, &str)] = &[
        ("", ""),
        ("a", ""),
        ("a:", ""),
        ("a:error=41", ""),
        (":a", ""),
        (":a:", ""),
        (":a:error=41", ""),
        ("error=32:a:", "32"),
        ("error=32:a=:", "32"),
        ("error=32:a=val:", "32"),
        ("asd:dsa:error=41", ""),
        ("asd41", ""),
        ("asd41:", ""),
        ("asd41:error=41", ""),
        ("asd41:hfd", ""),
        ("asd41:hfd:", ""),
        ("asd41:hfd:error=41", ""),
        ("asd=41:hfd", ""),
        ("asd=41:hfd:", ""),
        ("asd=41:hfd:error=41", ""),
        (":", ""),
        (":error=41", ""),
        ("=", ""),
        ("=:error=41", ""),
        ("=1", ""),
        ("=1:error=41", ""),
        ("=31", ""),
        ("=31:error=41", ""),
        (":=31", ""),
        (":=31:error=41", ""),
        ("=:31", ""),
        ("=:31:error=41", ""),
        ("error=41:31", "41"),
        ("asd=", ""),
        ("asd=:error=41", ""),
        ("asd=:", ""),
        ("error=41:asd=:", "41"),
        ("asd=x", ""),
        ("asd=x:", ""),
        ("asd=x:error=41", ""),
        ("asd=x1:error=41", ""),
        ("asd=1x:error=41", ""),
        ("error=41", "41"),
        ("error=41:", "41"),
        ("error=41:asd", "41"),
        ("error=41:asd=dsa", "41"),
        ("asd=;:dsa=12;3;;22;4;2:error=41", "41"),
    ];

    #[test]
    fn parses_systemtap_colors_as_the_c_tools() {
        for (spec, want) in COLOR_PARSING {
            let got = sgr_for(Some(spec), "error").unwrap_or_default();
            assert_eq!(got, *want, "SYSTEMTAP_COLORS={spec:?}");
        }
    }

    #[test]
    fn default_palette_and_other_keys() {
        assert_eq!(sgr_for(None, "error").as_deref(), Some("01;31"));
        assert_eq!(sgr_for(None, "warning").as_deref(), Some("00;33"));
        assert_eq!(sgr_for(None, "source").as_deref(), Some("00;34"));
        assert_eq!(sgr_for(None, "caret").as_deref(), Some("01"));
        assert_eq!(sgr_for(None, "token").as_deref(), Some("01"));
        assert_eq!(sgr_for(None, "errors"), None);
        assert_eq!(sgr_for(Some("warning=7"), "error"), None);
        // Escape bytes, letters, `m` cannot get through.
        for bad in ["error=1\x1b[2", "error=1m", "error=31;x", "error= 31"] {
            assert_eq!(sgr_for(Some(bad), "error"), None, "{bad:?}");
        }
    }

    #[test]
    fn tags_are_painted_as_print_stderr_does() {
        let p = Palette::from_colors(None);
        assert_eq!(p.error_tag(), "\x1b[01;31m\x1b[KERROR:\x1b[m\x1b[K");
        assert_eq!(p.warning_tag(), "\x1b[00;33m\x1b[KWARNING:\x1b[m\x1b[K");
        let p = Palette::from_colors(Some("warning=01;35"));
        assert_eq!(p.error_tag(), "ERROR:");
        assert_eq!(p.warning_tag(), "\x1b[01;35m\x1b[KWARNING:\x1b[m\x1b[K");
        let p = Palette::from_colors(Some(""));
        assert!(!p.is_colored());
        assert_eq!(Palette::none().error_tag(), "ERROR:");
    }

    #[test]
    fn when_to_colour() {
        use ColorMode::*;
        assert!(wanted(Always, false, Some("dumb")));
        assert!(!wanted(Never, true, Some("xterm")));
        assert!(wanted(Auto, true, Some("xterm")));
        assert!(wanted(Auto, true, None), "unset TERM is not dumb");
        assert!(wanted(Auto, true, Some("")));
        assert!(!wanted(Auto, true, Some("dumb")));
        assert!(!wanted(Auto, false, Some("xterm")));
        assert_eq!(
            Palette::new(Auto, true, Some("dumb"), None),
            Palette::none()
        );
        assert!(Palette::new(Always, false, Some("dumb"), None).is_colored());
    }

    #[test]
    fn the_mode_of_a_command_line() {
        let m = |a: &[&str]| {
            let v: Vec<OsString> = a.iter().map(OsString::from).collect();
            mode_in_args(Program::Staprun, &v)
        };
        assert_eq!(m(&[]), ColorMode::Auto);
        assert_eq!(m(&["-C", "always"]), ColorMode::Always);
        assert_eq!(m(&["-Calways", "-b", "0", "m"]), ColorMode::Always);
        assert_eq!(m(&["-C", "never", "-C", "always", "m"]), ColorMode::Always);
        assert_eq!(
            m(&["-C", "always", "-C", "bad", "-C", "never"]),
            ColorMode::Always
        );
        assert_eq!(m(&["--color=never", "m"]), ColorMode::Never);
        // An operand is not an option.
        assert_eq!(m(&["--", "-C", "always"]), ColorMode::Auto);
        // Unreadable: auto.
        assert_eq!(m(&["-C", "always", "-z"]), ColorMode::Auto);
    }
}
