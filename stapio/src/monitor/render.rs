//! The screen, as monitor.c lays it out: the status window (boxed, the top
//! half) with the module's status, its globals and the probe table; the
//! output window (the bottom half, or all of it after `x`) with the
//! script's output; the help box over both after `h`.
//!
//! The text of each window is made by pure functions ([`status_rows`],
//! [`output_rows`]) with curses' rules (tabs to the next multiple of 8,
//! long lines wrapped); [`draw`] only places it.
#![forbid(unsafe_code)]

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph};

use super::history::History;
use super::status::Status;
use super::view::{Extent, Mode, Pane, SortKey, View, sorted};

/// The widest line monitor.c formats (its `MAX_COLS`).
const MAX_COLS: usize = 256;

/// The help box's lines, as monitor.c has them.
pub const HELP: [&str; 12] = [
    "MONITOR MODE COMMANDS",
    "h - Show/hide help page",
    "c - Reset all global variables to their initial states",
    "s - Rotate sort column for probes",
    "t - Open a prompt to enter the index of a probe to toggle",
    "p/r - Pause/resume script by toggling off/on all probes",
    "x - Hide/show the status window",
    "q - Quit script",
    "j,k/DownArrow,UpArrow - Scroll down/up by one entry",
    "PgDown/PgUp - Scroll down/up by one page",
    "Home/End - Scroll to beginning/end",
    "Tab - Toggle scroll window",
];

/// What is drawn.
pub struct Model<'a> {
    pub status: Option<&'a Status>,
    pub view: &'a View,
    pub history: &'a History,
}

/// The rows of the status window's inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRows {
    pub rows: Vec<String>,
    /// The row of the probe table's header (bold when the table is the
    /// scrolling window).
    pub header: Option<usize>,
    /// How many probe rows are shown.
    pub probe_rows: usize,
}

/// Text as curses writes it: tabs to the next multiple of 8, control
/// characters as `^X`.
fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut col = 0;
    for c in text.chars() {
        match c {
            '\t' => {
                let n = 8 - col % 8;
                out.extend(std::iter::repeat_n(' ', n));
                col += n;
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push('^');
                out.push(if c == '\u{7f}' {
                    '?'
                } else {
                    char::from(c as u8 + 0x40)
                });
                col += 2;
            }
            c => {
                out.push(c);
                col += 1;
            }
        }
    }
    out
}

/// A line cut into rows of `width` characters (curses wraps at the edge).
fn wrap(line: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    if chars.is_empty() || width == 0 {
        return vec![String::new()];
    }
    chars.chunks(width).map(|c| c.iter().collect()).collect()
}

/// The header of a column: its name, `*` for the sort column.
fn heading(name: &str, key: SortKey, sort: SortKey) -> String {
    if key == sort {
        format!("{name}*")
    } else {
        name.to_string()
    }
}

/// The status window's rows for a window of `width` x `height`.
pub fn status_rows(status: Option<&Status>, view: &View, width: u16, height: u16) -> StatusRows {
    let (width, height) = (usize::from(width), usize::from(height));
    let mut rows: Vec<String> = Vec::new();
    let mut header = None;
    let mut probe_rows = 0;
    let put = |rows: &mut Vec<String>, line: &str| {
        rows.extend(wrap(&expand(line), width));
    };
    match status {
        None => put(&mut rows, "(data not available)"),
        Some(st) => {
            let max_cols = width.min(MAX_COLS);
            put(
                &mut rows,
                &format!(
                    "uptime: {} uid: {} memory: {}",
                    st.uptime, st.uid, st.memory
                ),
            );
            put(
                &mut rows,
                &format!(
                    "module_name: {} probes: {} ",
                    st.module_name,
                    st.probes.len()
                ),
            );
            // Globals, as many to a line as fit; one too long for any line
            // is left out.
            let mut line = String::from("globals: ");
            for (name, value) in &st.globals {
                let item = format!("{name}: {} ", value.text());
                let len = item.chars().count() + 1;
                if len > max_cols {
                    continue;
                }
                if line.chars().count() + len > max_cols {
                    put(&mut rows, &line);
                    line.clear();
                }
                line.push_str(&item);
            }
            if !line.is_empty() {
                put(&mut rows, &line);
            }
            put(&mut rows, "");
            // The probe table: columns as wide as their widest value,
            // right-aligned, separated by tabs.
            let probes = sorted(&st.probes, view.sort);
            let mut widths = [0usize; 7];
            for p in &probes {
                for (w, f) in widths.iter_mut().zip(p.fields()) {
                    *w = (*w).max(f.text().chars().count());
                }
            }
            let names = ["index", "state", "hits", "min", "avg", "max", "name"];
            let mut head = String::new();
            for (i, key) in SortKey::ALL.iter().enumerate() {
                let h = heading(names[i], *key, view.sort);
                if i < 6 {
                    head.push_str(&format!("{h:>w$}\t", w = widths[i]));
                } else {
                    head.push_str(&h);
                }
            }
            header = Some(rows.len());
            put(&mut rows, &head);
            let first = view.probe_scroll.min(probes.len().saturating_sub(1));
            let room = height.saturating_sub(rows.len());
            for p in probes.iter().skip(first).take(room) {
                let mut row = String::new();
                for (i, f) in p.fields().iter().take(6).enumerate() {
                    row.push_str(&format!("{:>w$}\t", f.text(), w = widths[i]));
                }
                let row = expand(&row);
                let room = max_cols.saturating_sub(row.chars().count() + 1);
                let name: String = p.name.text().chars().take(room).collect();
                put(&mut rows, &format!("{row}{name}"));
                probe_rows += 1;
            }
        }
    }
    rows.truncate(height);
    // The last row: the key hint, the index prompt, or the end.
    let footer = match (&view.mode, status) {
        (Mode::Insert(typed), _) => Some(format!("enter probe index: {typed}")),
        (Mode::Exited, _) => Some("EXITED: press q again to quit".to_string()),
        (Mode::Normal, Some(_)) => Some("press h for help".to_string()),
        (Mode::Normal, None) => None,
    };
    if let Some(f) = footer
        && height > 0
    {
        rows.resize(height, String::new());
        // The footer covers the last probe row if the table reached it.
        if probe_rows > 0
            && rows.len() == height
            && header.is_some_and(|h| h + probe_rows >= height - 1)
        {
            probe_rows -= 1;
        }
        rows[height - 1] = f;
    }
    StatusRows {
        rows,
        header,
        probe_rows,
    }
}

/// The output window's rows: the newest lines that fit (or older ones,
/// scrolled), wrapped at `width`.
pub fn output_rows(history: &History, scroll: usize, width: u16, height: u16) -> Vec<String> {
    let (width, height) = (usize::from(width), usize::from(height));
    let mut rows: Vec<String> = Vec::new();
    for line in history.tail(height, scroll) {
        rows.extend(wrap(&expand(&line), width));
    }
    let extra = rows.len().saturating_sub(height);
    rows.drain(..extra);
    rows
}

/// Draw the whole screen; returns the sizes scrolling needs.
pub fn draw(frame: &mut Frame<'_>, m: &Model<'_>) -> Extent {
    let area = frame.area();
    let mut extent = Extent {
        probes: m.status.map_or(0, |s| s.probes.len()),
        lines: m.history.len(),
        ..Extent::default()
    };
    let output_area = if m.view.status_hidden {
        area
    } else {
        let top = Rect::new(area.x, area.y, area.width, area.height / 2);
        let block = Block::bordered();
        let inner = block.inner(top);
        let s = status_rows(m.status, m.view, inner.width, inner.height);
        extent.probe_rows = s.probe_rows;
        let bold = m.view.pane == Pane::Status;
        let lines: Vec<Line<'_>> = s
            .rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                if bold && Some(i) == s.header {
                    Line::styled(r, Style::new().add_modifier(Modifier::BOLD))
                } else {
                    Line::raw(r)
                }
            })
            .collect();
        frame.render_widget(Paragraph::new(lines).block(block), top);
        Rect::new(
            area.x,
            area.y + top.height,
            area.width,
            area.height - top.height,
        )
    };
    extent.output_rows = usize::from(output_area.height);
    let mut view = m.view.clone();
    view.clamp(extent);
    let rows = output_rows(
        m.history,
        view.output_scroll,
        output_area.width,
        output_area.height,
    );
    let lines: Vec<Line<'_>> = rows.into_iter().map(Line::raw).collect();
    frame.render_widget(Paragraph::new(lines), output_area);
    if m.view.help {
        let w = area.width;
        let h = area.height;
        let outer = Rect::new(
            (w / 8).saturating_sub(1),
            (h / 8).saturating_sub(1),
            (w * 3 / 4 + 2).min(w),
            (h * 3 / 4 + 2).min(h),
        )
        .intersection(area);
        frame.render_widget(Clear, outer);
        let lines: Vec<Line<'_>> = HELP
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    Line::styled(*l, Style::new().add_modifier(Modifier::BOLD))
                } else {
                    Line::raw(*l)
                }
            })
            .collect();
        frame.render_widget(Paragraph::new(lines).block(Block::bordered()), outer);
    }
    extent
}

#[cfg(test)]
mod tests {
    use super::super::status::{parse, tests::SAMPLE};
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(terminal: &Terminal<TestBackend>) -> Vec<String> {
        super::super::term::screen_rows(terminal)
    }

    #[test]
    fn the_probe_table_and_the_output_appear() {
        let status = parse(SAMPLE.as_bytes()).unwrap();
        let history = History::new();
        history.push("begin probe fired\nslow timer: ticks=40\n");
        let view = View {
            sort: SortKey::Hits,
            ..View::default()
        };
        let mut t = Terminal::new(TestBackend::new(100, 30)).unwrap();
        let mut extent = Extent::default();
        t.draw(|f| {
            extent = draw(
                f,
                &Model {
                    status: Some(&status),
                    view: &view,
                    history: &history,
                },
            )
        })
        .unwrap();
        let rows = screen(&t);
        let text = rows.join("\n");
        assert!(rows[0].starts_with('┌'), "{text}");
        assert!(
            rows[1].contains("uptime: 00:01:05 uid: 1001 memory: 123456 data"),
            "{text}"
        );
        assert!(rows[2].contains("module_name: monitor probes: 3"), "{text}");
        assert!(
            rows[3].contains("globals: ticks: 42 last: tick 40 "),
            "{text}"
        );
        // The header, hits marked as the sort column, then the busiest probe.
        let head = rows.iter().position(|r| r.contains("index")).unwrap();
        assert!(rows[head].starts_with("│index   state   hits*"), "{text}");
        let first = &rows[head + 1];
        assert!(
            first.contains("650") && first.contains("timer.ms(100)"),
            "{text}"
        );
        assert!(first.contains("9820"), "{text}");
        assert!(rows[head + 2].contains("begin"), "{text}");
        assert!(
            rows[head + 3].contains("kernel.function(\"vfs_read\")"),
            "{text}"
        );
        assert!(rows[head + 3].contains("off"), "{text}");
        assert!(rows[13].contains("press h for help"), "{text}");
        assert!(rows[14].starts_with('└'), "{text}");
        assert_eq!(rows[15].trim_end(), "begin probe fired");
        assert_eq!(rows[16].trim_end(), "slow timer: ticks=40");
        assert_eq!(extent.probes, 3);
        assert_eq!(extent.probe_rows, 3);
        assert_eq!(extent.output_rows, 15);
    }

    #[test]
    fn status_rows_follow_curses() {
        let status = parse(SAMPLE.as_bytes()).unwrap();
        let view = View::default();
        let s = status_rows(Some(&status), &view, 98, 13);
        let head = s.header.unwrap();
        assert_eq!(head, 5);
        // Right-aligned columns at tab stops of 8.
        assert_eq!(
            s.rows[head],
            "index*  state   hits     min     avg     max    name"
        );
        assert_eq!(
            s.rows[head + 2],
            "1        on     650      310     455    9820    timer.ms(100)"
        );
        assert_eq!(s.rows[4], "");
        assert_eq!(s.rows[12], "press h for help");
        // No data: the C text, and the prompt or the end still show.
        let none = status_rows(None, &view, 40, 5);
        assert_eq!(none.rows, ["(data not available)"]);
        let mut v = View::default();
        v.exited();
        let ended = status_rows(None, &v, 40, 3);
        assert_eq!(ended.rows[2], "EXITED: press q again to quit");
        v.mode = Mode::Insert("4".into());
        assert_eq!(
            status_rows(Some(&status), &v, 40, 13).rows[12],
            "enter probe index: 4"
        );
        // A short window: the footer covers the last probe row.
        let small = status_rows(Some(&status), &view, 98, 8);
        assert_eq!(small.rows.len(), 8);
        assert_eq!(small.probe_rows, 1);
        assert_eq!(small.rows[7], "press h for help");
    }

    #[test]
    fn globals_pack_into_lines() {
        let status = parse(SAMPLE.as_bytes()).unwrap();
        let s = status_rows(Some(&status), &View::default(), 40, 20);
        // The long first line wraps.
        assert_eq!(s.rows[2], "loc kb");
        let g = s
            .rows
            .iter()
            .position(|r| r.starts_with("globals:"))
            .unwrap();
        assert_eq!(s.rows[g], "globals: ticks: 42 last: tick 40 ");
        assert_eq!(s.rows[g + 1], "per_cpu: { \"(0)\": 21, \"(1)\": 21 } ");
        // lat's value is longer than a line: left out, as monitor.c does.
        assert_eq!(s.rows[g + 2], "");
    }

    #[test]
    fn output_wraps_scrolls_and_shows_control_characters() {
        let h = History::new();
        for i in 0..20 {
            h.push(&format!("line {i}\n"));
        }
        h.push("a\tb\x1b[1m\n");
        // The newest line, wrapped, at the bottom.
        assert_eq!(output_rows(&h, 0, 10, 2), ["a       b^", "[[1m"]);
        assert_eq!(output_rows(&h, 0, 10, 3)[0], "line 19");
        assert_eq!(output_rows(&h, 5, 10, 2), ["line 14", "line 15"]);
    }

    #[test]
    fn help_and_hidden_status() {
        let status = parse(SAMPLE.as_bytes()).unwrap();
        let history = History::new();
        history.push("out\n");
        let view = View {
            help: true,
            status_hidden: true,
            ..View::default()
        };
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| {
            draw(
                f,
                &Model {
                    status: Some(&status),
                    view: &view,
                    history: &history,
                },
            );
        })
        .unwrap();
        let text = screen(&t).join("\n");
        assert!(text.contains("MONITOR MODE COMMANDS"), "{text}");
        assert!(text.contains("q - Quit script"), "{text}");
        assert!(!text.contains("uptime"), "{text}");
    }
}
