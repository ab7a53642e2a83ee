//! `--output-format tui`: a full-screen live view (ratatui on crossterm).
//!
//! The conversation on the left; on the right the live numbers: prefill and
//! decode tok/s, time to first token, tokens in the KV cache against the
//! context size, memory, and with METALLIC_PROFILING_ENABLED the ops and
//! matmul shapes that took the most time so far, refreshed while it decodes.
//! The generation runs on this thread; its observer redraws (at most every
//! 50 ms) and polls the keyboard, so Ctrl-C, which raw mode delivers as a
//! key, stops the reply. The terminal is restored on every exit path: the
//! [`Screen`] guard's drop, and ratatui's panic hook.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use metallic::backend::Backend;
use metallic::exec::Exec;
use metallic::generate::{generate_with, GenerateOptions, Generation, Progress, StopReason};
use metallic::model::{Model, State};
use metallic::report::LiveProfile;
use metallic::tokenizer::Tokenizer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::{DefaultTerminal, Frame};

use crate::runinfo::RunInfo;

/// The terminal in raw mode on the alternate screen; dropping it restores it.
pub struct Screen {
    term: DefaultTerminal,
}

impl Screen {
    pub fn start() -> Result<Screen> {
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            bail!(
                "--output-format tui needs a terminal; use --output-format text or json in pipes"
            );
        }
        // try_init also installs a panic hook that restores the terminal
        // before the panic message is printed.
        let term = ratatui::try_init().context("setting up the terminal")?;
        Ok(Screen { term })
    }

    pub fn draw(&mut self, view: &View) -> Result<()> {
        self.term
            .draw(|f| view.render(f))
            .context("drawing the screen")?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// Output of a slash command or a status message.
    Note,
}

impl Role {
    pub fn from_name(role: &str) -> Role {
        match role {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => Role::Note,
        }
    }
    fn label(self) -> (&'static str, Color) {
        match self {
            Role::System => ("system", Color::Magenta),
            Role::User => ("you", Color::Green),
            Role::Assistant => ("assistant", Color::Cyan),
            Role::Note => ("·", Color::DarkGray),
        }
    }
}

/// What the screen shows; everything the render reads.
pub struct View {
    pub title: String,
    pub entries: Vec<(Role, String)>,
    /// The line being typed (chat), with the cursor as a char index.
    pub input: Option<(String, usize)>,
    pub status: String,
    pub info_lines: Vec<(String, String)>,
    pub progress: Progress,
    pub generating: bool,
    pub profile: Option<LiveProfile>,
    /// Memory in words (refreshed after each turn).
    pub memory: String,
    pub load_ms: f64,
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Break `text` into rows of at most `width` characters, at spaces where it can.
fn wrap(text: &str, width: usize, out: &mut Vec<String>) {
    let width = width.max(1);
    for para in text.split('\n') {
        let mut row = String::new();
        let mut row_len = 0usize;
        for word in para.split_inclusive(' ') {
            let wlen = word.chars().count();
            if row_len + wlen > width && row_len > 0 {
                out.push(std::mem::take(&mut row));
                row_len = 0;
            }
            if wlen > width {
                for c in word.chars() {
                    if row_len == width {
                        out.push(std::mem::take(&mut row));
                        row_len = 0;
                    }
                    row.push(c);
                    row_len += 1;
                }
            } else {
                row.push_str(word);
                row_len += wlen;
            }
        }
        out.push(row);
    }
}

impl View {
    pub fn new(info: &RunInfo, profiling: bool) -> View {
        View {
            title: format!(
                " metallic · {} · {} ",
                info.model.line(),
                info.device.split(':').next().unwrap_or(&info.device)
            ),
            entries: Vec::new(),
            input: None,
            status: String::new(),
            info_lines: Vec::new(),
            progress: Progress::default(),
            generating: false,
            profile: profiling.then(LiveProfile::default),
            memory: RunInfo::memory_line(None),
            load_ms: info.load_ms,
        }
    }

    /// Append generated text to the reply being written.
    pub fn push_text(&mut self, text: &str) {
        match self.entries.last_mut() {
            Some((Role::Assistant, s)) if self.generating => s.push_str(text),
            _ => self.entries.push((Role::Assistant, text.to_string())),
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.entries.push((Role::Note, text.into()));
    }

    fn stats_lines(&self) -> Vec<Line<'static>> {
        let p = &self.progress;
        let key = |k: &str| Span::styled(format!("{k:<8}"), Style::default().fg(Color::DarkGray));
        let mut lines = vec![
            Line::from(vec![
                key("load"),
                Span::raw(format!("{:.0} ms", self.load_ms)),
            ]),
            Line::from(vec![
                key("ttft"),
                Span::raw(if p.generated > 0 {
                    fmt_ms(p.prefill_time)
                } else {
                    "-".into()
                }),
            ]),
            Line::from(vec![
                key("prefill"),
                Span::styled(
                    format!("{:.1} tok/s", p.prefill_tok_s()),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
            ]),
            Line::from(vec![
                key(""),
                Span::raw(format!("{} new, {} reused", p.prefilled, p.reused_tokens)),
            ]),
            Line::from(vec![
                key("decode"),
                Span::styled(
                    format!("{:.1} tok/s", p.decode_tok_s()),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
            ]),
            Line::from(vec![key(""), Span::raw(format!("{} tokens", p.generated))]),
            Line::from(vec![
                key("cache"),
                Span::raw(format!("{} / {}", p.n_past, p.capacity)),
            ]),
            Line::from(vec![key("memory"), Span::raw(self.memory.clone())]),
        ];
        for (k, v) in &self.info_lines {
            lines.push(Line::from(vec![key(k), Span::raw(v.clone())]));
        }
        lines.push(Line::raw(""));
        match &self.profile {
            None => lines.push(Line::styled(
                "profile: METALLIC_PROFILING_ENABLED=1",
                Style::default().fg(Color::DarkGray),
            )),
            Some(prof) => {
                let head = Style::default().add_modifier(Modifier::UNDERLINED);
                lines.push(Line::styled("top ops (ms, % of all)", head));
                let total = prof.total_ms.max(1e-9);
                for r in prof.top_ops(8) {
                    lines.push(Line::raw(format!(
                        "{:>9.1} {:>3.0}% {}@{}",
                        r.total_ms,
                        100.0 * r.total_ms / total,
                        r.name,
                        r.imp
                    )));
                }
                lines.push(Line::styled("top matmul shapes (ms)", head));
                for r in prof.top_shapes(6) {
                    lines.push(Line::raw(format!(
                        "{:>9.1} {} @{} ×{}",
                        r.total_ms, r.name, r.imp, r.count
                    )));
                }
            }
        }
        lines
    }

    /// The numbers in four lines, for a terminal too narrow for the side panel.
    fn compact_lines(&self) -> Vec<Line<'static>> {
        let p = &self.progress;
        let ttft = if p.generated > 0 {
            fmt_ms(p.prefill_time)
        } else {
            "-".into()
        };
        vec![
            Line::raw(format!(
                "prefill {:.1} tok/s ({} new, {} reused) · ttft {ttft}",
                p.prefill_tok_s(),
                p.prefilled,
                p.reused_tokens
            )),
            Line::raw(format!(
                "decode {:.1} tok/s ({} tokens) · cache {} / {}",
                p.decode_tok_s(),
                p.generated,
                p.n_past,
                p.capacity
            )),
            Line::raw(format!("{} · load {:.0} ms", self.memory, self.load_ms)),
            Line::raw(match &self.profile {
                Some(prof) => prof
                    .top_ops(2)
                    .iter()
                    .map(|r| format!("{}@{} {:.0} ms", r.name, r.imp, r.total_ms))
                    .collect::<Vec<_>>()
                    .join(" · "),
                None => String::new(),
            }),
        ]
    }

    fn conversation_lines(&self, width: usize, height: usize) -> Vec<Line<'static>> {
        let mut out: Vec<Line<'static>> = Vec::new();
        for (role, text) in &self.entries {
            let (label, color) = role.label();
            out.push(Line::styled(
                label.to_string(),
                Style::default().fg(color).add_modifier(Modifier::BOLD),
            ));
            let mut rows = Vec::new();
            wrap(text, width, &mut rows);
            let style = if *role == Role::Note {
                Style::default().fg(Color::DarkGray)
            } else {
                Style::default()
            };
            out.extend(rows.into_iter().map(|r| Line::styled(r, style)));
        }
        // Follow the end, as a terminal scrolls.
        let skip = out.len().saturating_sub(height);
        out.split_off(skip)
    }

    pub fn render(&self, f: &mut Frame) {
        let area = f.area();
        if area.width < 24 || area.height < 8 {
            f.render_widget(
                Paragraph::new(format!(
                    "terminal too small ({}x{}); enlarge it",
                    area.width, area.height
                ))
                .wrap(ratatui::widgets::Wrap { trim: true }),
                area,
            );
            return;
        }
        let input_h = if self.input.is_some() { 3 } else { 0 };
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(1),
                Constraint::Min(3),
                Constraint::Length(input_h),
                Constraint::Length(1),
            ])
            .split(area);
        f.render_widget(
            Paragraph::new(self.title.clone()).style(
                Style::default()
                    .fg(Color::Black)
                    .bg(Color::Cyan)
                    .add_modifier(Modifier::BOLD),
            ),
            rows[0],
        );
        // Stats beside the conversation when there is room, else below it.
        let wide = area.width >= 80;
        let (conv_area, stats_area) = if wide {
            let cols = Layout::default()
                .direction(Direction::Horizontal)
                .constraints([Constraint::Min(30), Constraint::Length(46)])
                .split(rows[1]);
            (cols[0], cols[1])
        } else {
            let parts = Layout::default()
                .direction(Direction::Vertical)
                .constraints([Constraint::Min(3), Constraint::Length(6)])
                .split(rows[1]);
            (parts[0], parts[1])
        };
        let block = Block::default()
            .borders(Borders::ALL)
            .title(" conversation ");
        let inner = block.inner(conv_area);
        f.render_widget(block, conv_area);
        let lines = self.conversation_lines(inner.width as usize, inner.height as usize);
        f.render_widget(Paragraph::new(lines), inner);
        let title = if self.generating { " live " } else { " stats " };
        let stats = if wide {
            self.stats_lines()
        } else {
            self.compact_lines()
        };
        f.render_widget(
            Paragraph::new(stats).block(Block::default().borders(Borders::ALL).title(title)),
            stats_area,
        );
        if let Some((text, cursor)) = &self.input {
            self.render_input(f, rows[2], text, *cursor);
        }
        f.render_widget(
            Paragraph::new(self.status.clone()).style(Style::default().fg(Color::DarkGray)),
            rows[3],
        );
    }

    fn render_input(&self, f: &mut Frame, area: Rect, text: &str, cursor: usize) {
        let block = Block::default().borders(Borders::ALL).title(" > ");
        let inner = block.inner(area);
        let width = inner.width.max(1) as usize;
        // Scroll the line so that the cursor stays visible.
        let first = cursor.saturating_sub(width - 1);
        let shown: String = text.chars().skip(first).take(width).collect();
        f.render_widget(Paragraph::new(shown).block(block), area);
        if !self.generating {
            f.set_cursor_position((inner.x + (cursor - first) as u16, inner.y));
        }
    }
}

/// A line editor for the input box: insert, delete, move, history.
#[derive(Default)]
pub struct LineEditor {
    pub text: String,
    pub cursor: usize,
    history: Vec<String>,
    /// Position while browsing history (`history.len()`: the new line).
    browse: usize,
}

/// What a key did to the line.
pub enum Edit {
    None,
    Submit(String),
    Interrupt,
    Eof,
}

impl LineEditor {
    fn byte(&self, char_index: usize) -> usize {
        self.text
            .char_indices()
            .nth(char_index)
            .map_or(self.text.len(), |(i, _)| i)
    }

    pub fn key(&mut self, k: KeyEvent) -> Edit {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let len = self.text.chars().count();
        match k.code {
            KeyCode::Char('c') if ctrl => return Edit::Interrupt,
            KeyCode::Char('d') if ctrl && self.text.is_empty() => return Edit::Eof,
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = len,
            KeyCode::Char('u') if ctrl => {
                let b = self.byte(self.cursor);
                self.text.drain(..b);
                self.cursor = 0;
            }
            KeyCode::Char(c) if !ctrl => {
                let b = self.byte(self.cursor);
                self.text.insert(b, c);
                self.cursor += 1;
            }
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                let b = self.byte(self.cursor);
                self.text.remove(b);
            }
            KeyCode::Delete if self.cursor < len => {
                let b = self.byte(self.cursor);
                self.text.remove(b);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(len),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = len,
            KeyCode::Up if self.browse > 0 => {
                self.browse -= 1;
                self.text = self.history[self.browse].clone();
                self.cursor = self.text.chars().count();
            }
            KeyCode::Down if self.browse < self.history.len() => {
                self.browse += 1;
                self.text = self.history.get(self.browse).cloned().unwrap_or_default();
                self.cursor = self.text.chars().count();
            }
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.text);
                self.cursor = 0;
                if !line.trim().is_empty() && self.history.last() != Some(&line) {
                    self.history.push(line.clone());
                }
                self.browse = self.history.len();
                return Edit::Submit(line);
            }
            _ => {}
        }
        Edit::None
    }
}

/// Whether a key event is Ctrl-C.
pub fn is_ctrl_c(k: &KeyEvent) -> bool {
    k.kind != KeyEventKind::Release
        && k.code == KeyCode::Char('c')
        && k.modifiers.contains(KeyModifiers::CONTROL)
}

/// Run one generation with the view live: redraws and a Ctrl-C check after
/// every prefill chunk and token.
#[allow(clippy::too_many_arguments)]
pub fn run_live<'b, B: Backend + 'b>(
    screen: &mut Screen,
    view: &mut View,
    opts: &GenerateOptions,
    mut gen: impl FnMut(&mut metallic::generate::Observer<'_, 'b, B>) -> Result<Generation>,
) -> Result<Generation> {
    let flag = opts.interrupt.clone();
    view.generating = true;
    view.status = "generating… Ctrl-C stops the reply".into();
    let mut last_draw: Option<Instant> = None;
    let mut draw_error = None;
    let result = {
        let mut observer = |text: &str, p: &Progress, ex: &Exec<'b, B>| {
            if !text.is_empty() {
                view.push_text(text);
            }
            view.progress = *p;
            if let (Some(prof), Some(rec)) = (view.profile.as_mut(), ex.recorder()) {
                prof.update(rec);
            }
            if last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(50)) {
                last_draw = Some(Instant::now());
                if let Err(e) = screen.draw(view) {
                    draw_error.get_or_insert(e);
                }
                // Raw mode: Ctrl-C arrives as a key, not a signal.
                while event::poll(Duration::ZERO).unwrap_or(false) {
                    if let Ok(Event::Key(k)) = event::read() {
                        if is_ctrl_c(&k) {
                            if let Some(f) = &flag {
                                f.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        };
        gen(&mut observer)
    };
    view.generating = false;
    if let Some(e) = draw_error {
        return Err(e);
    }
    let g = result?;
    view.memory = RunInfo::memory_line(None);
    view.status = match g.stop_reason {
        StopReason::Interrupted => "interrupted".into(),
        r => format!("done ({})", r.name()),
    };
    Ok(g)
}

/// `generate --output-format tui`: show the prompt and the reply live, then
/// wait for a key (q, Esc, Enter or Ctrl-C) before restoring the terminal.
#[allow(clippy::too_many_arguments)]
pub fn generate_view<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tok: &Tokenizer,
    ids: &[u32],
    opts: &GenerateOptions,
    info: &RunInfo,
    prompt_text: &str,
) -> Result<Generation> {
    let mut screen = Screen::start()?;
    let mut view = View::new(info, ex.is_recording());
    view.progress.capacity = st.capacity;
    view.entries.push((Role::User, prompt_text.to_string()));
    view.generating = true;
    view.entries.push((Role::Assistant, String::new()));
    let g = run_live(&mut screen, &mut view, opts, |obs| {
        Ok(generate_with(ex, model, st, tok, ids, 0, opts, obs)?)
    })?;
    view.memory = RunInfo::memory_line(ex.backend.memory().as_ref());
    if g.stop_reason != StopReason::Interrupted {
        view.status = format!("{} · press q to quit", view.status);
        loop {
            screen.draw(&view)?;
            if let Event::Key(k) = event::read().context("reading the keyboard")? {
                if k.kind == KeyEventKind::Press
                    && (is_ctrl_c(&k)
                        || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc | KeyCode::Enter))
                {
                    break;
                }
            }
        }
    }
    drop(screen);
    // The text stays in the scrollback after the alternate screen is gone.
    println!("{}", g.text);
    Ok(g)
}
