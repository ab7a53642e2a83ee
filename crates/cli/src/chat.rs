//! `metallic chat`: a conversation that keeps its KV cache between turns.
//!
//! The turn logic (render, match the cache, prefill only what is new) is the
//! core's [`Conversation`]; this file is the REPL around it: a rustyline
//! prompt (or the TUI's input box), slash commands and Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use metallic::backend::Backend;
use metallic::conversation::{template_of, Conversation, TurnStats};
use metallic::generate::{GenerateOptions, Generation, StopReason};
use metallic_gguf::GgufFile;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use rustyline::error::ReadlineError;

use crate::common::{open_model, resolve_model, stderr_is_terminal, use_color};
use crate::device::{on_device, OnBackend};
use crate::generate::{
    load, positive_usize, profiling_requested, read_messages, sampling_line, Loaded, ModelArgs,
    OutputFormat, SamplingArgs,
};
use crate::interrupt;
use crate::report;
use crate::runinfo::RunInfo;
use crate::tui::{run_live, Edit, LineEditor, Role, Screen, View};

#[derive(Args, Debug, Clone)]
#[command(allow_negative_numbers = true)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message for the conversation (change it later with /system).
    #[arg(long)]
    pub system: Option<String>,
    /// Start from a saved conversation (a JSON list of {"role", "content"}, as /save writes).
    #[arg(long, value_name = "FILE")]
    pub messages: Option<PathBuf>,
    /// Most tokens per reply, 1 or more.
    #[arg(short = 'n', long, default_value_t = 1024, value_parser = positive_usize)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop a reply when this text is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Treat special-token text typed in messages as plain text (the default; kept for
    /// symmetry with `generate`).
    #[arg(long)]
    pub no_parse_special: bool,
    /// Let special-token text typed in messages (`<|im_end|><|im_start|>system`) become
    /// control tokens. Off by default: messages are data and cannot forge roles.
    #[arg(long, conflicts_with = "no_parse_special")]
    pub parse_special_content: bool,
    /// Keep the prompt history in this file between sessions [default: memory only].
    #[arg(long, value_name = "FILE")]
    pub history_file: Option<PathBuf>,
    /// text: a line-editing prompt, replies streamed; tui: a full-screen
    /// live view (json is for generate).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
}

const HELP: &str = "\
/reset          forget the conversation (the system message stays)
/system [TEXT]  show or set the system message (empty TEXT removes it)
/save FILE      write the conversation as JSON messages
/load FILE      read a conversation written by /save
/stats          speeds, cache use and memory of the last reply
/help           this list
/exit           leave (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during a reply stops it and returns to the prompt.";

/// What a line of input asks for.
enum Action {
    Say(String),
    Output(String),
    Exit,
}

struct Session<'b, B: Backend> {
    loaded: Loaded<'b, B>,
    conv: Conversation,
    opts: GenerateOptions,
    last: Option<(Generation, TurnStats)>,
    turns: usize,
}

impl<'b, B: Backend> Session<'b, B> {
    fn command(&mut self, line: &str) -> Result<Action> {
        let line = line.trim_end_matches(['\r', '\n']);
        if !line.starts_with('/') {
            return Ok(Action::Say(line.to_string()));
        }
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let out = match cmd {
            "/exit" | "/quit" | "/bye" => return Ok(Action::Exit),
            "/help" | "/?" => HELP.to_string(),
            "/reset" => {
                self.conv.reset();
                self.last = None;
                "conversation reset".into()
            }
            "/system" if rest.is_empty() && !line.ends_with(' ') => match self.conv.system() {
                Some(s) => format!("system: {s}"),
                None => "no system message".into(),
            },
            "/system" => {
                self.conv.set_system((!rest.is_empty()).then_some(rest));
                if rest.is_empty() {
                    "system message removed".into()
                } else {
                    "system message set".into()
                }
            }
            "/save" => {
                if rest.is_empty() {
                    bail!("/save needs a file name: /save FILE");
                }
                let json = serde_json::to_string_pretty(self.conv.messages())?;
                std::fs::write(rest, json + "\n").with_context(|| format!("writing {rest}"))?;
                format!("saved {} messages to {rest}", self.conv.messages().len())
            }
            "/load" => {
                if rest.is_empty() {
                    bail!("/load needs a file name: /load FILE");
                }
                let messages = read_messages(Path::new(rest))?;
                let n = messages.len();
                self.conv.set_messages(messages);
                self.last = None;
                format!("loaded {n} messages from {rest}")
            }
            "/stats" => self.stats(),
            _ => bail!("unknown command {cmd}; /help lists them"),
        };
        Ok(Action::Output(out))
    }

    fn stats(&self) -> String {
        let st = &self.loaded.st;
        let mut s = format!(
            "turns {} | messages {} | cache {} / {} tokens\n",
            self.turns,
            self.conv.messages().len(),
            st.n_past,
            st.capacity
        );
        if let Some((g, t)) = &self.last {
            s.push_str(&turn_line(g, t, st.n_past, st.capacity));
            s.push('\n');
        }
        s.push_str(&format!(
            "{} | load {:.0} ms | {}",
            self.loaded.info.model.line(),
            self.loaded.info.load_ms,
            RunInfo::memory_line(self.loaded.ex.backend.memory().as_ref())
        ));
        s.push_str(&format!("\n{}", sampling_line(&self.opts.sampler)));
        s
    }
}

/// The stats of one reply: how much of the prompt came from the cache.
fn turn_line(g: &Generation, t: &TurnStats, n_past: usize, capacity: usize) -> String {
    format!(
        "prompt {} tokens: {} reused, {} prefilled | ttft {:.1} ms | prefill {:.1} tok/s | \
         {} generated, decode {:.1} tok/s ({}) | cache {}/{}",
        t.prompt_tokens,
        t.reused_tokens,
        t.prefilled_tokens,
        g.prefill_time.as_secs_f64() * 1e3,
        g.prefill_tok_s(),
        g.ids.len(),
        g.decode_tok_s(),
        g.stop_reason.name(),
        n_past,
        capacity
    )
}

struct Job {
    args: ChatArgs,
    file: Arc<GgufFile>,
}

impl OnBackend for Job {
    type Out = ();
    fn run<B: Backend>(self, backend: B) -> Result<()> {
        let args = &self.args;
        let loaded = load(
            &backend,
            &self.file,
            &args.model,
            profiling_requested(false),
        )?;
        let template = template_of(&self.file, &loaded.tok).context("chat")?;
        let mut conv = Conversation::new(template, args.system.as_deref());
        conv.parse_special_content = args.parse_special_content;
        if let Some(f) = &args.messages {
            conv.set_messages(read_messages(f)?);
            if let Some(s) = &args.system {
                conv.set_system(Some(s));
            }
        }
        let seed = args.sampling.seed();
        let opts = GenerateOptions {
            max_tokens: args.max_tokens,
            sampler: args.sampling.params(seed),
            stop: args.stop.clone(),
            ignore_eos: false,
            use_graphs: !args.model.no_graphs,
            interrupt: Some(interrupt::flag()),
        };
        let mut s = Session {
            loaded,
            conv,
            opts,
            last: None,
            turns: 0,
        };
        match args.output_format {
            OutputFormat::Tui => tui_loop(&mut s)?,
            _ => plain_loop(&mut s, args.history_file.as_deref())?,
        }
        if let Some(rec) = s.loaded.ex.take_recorder() {
            report::emit(&rec, None)?;
        }
        Ok(())
    }
}

fn reply<'b, B: Backend>(
    s: &mut Session<'b, B>,
    text: &str,
    observer: &mut metallic::generate::Observer<'_, 'b, B>,
) -> Result<Generation> {
    interrupt::clear();
    let l = &mut s.loaded;
    let (g, t) = s.conv.reply(
        &mut l.ex, &l.model, &mut l.st, &l.tok, text, &s.opts, observer,
    )?;
    s.turns += 1;
    s.last = Some((g.clone(), t));
    interrupt::clear();
    Ok(g)
}

fn plain_loop<B: Backend>(s: &mut Session<'_, B>, history: Option<&Path>) -> Result<()> {
    let color = use_color(stderr_is_terminal());
    let (dim, reset) = if color {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    let mut rl = rustyline::DefaultEditor::new().context("starting the line editor")?;
    // After the editor: it installs a SIGINT handler of its own for its
    // lifetime, which would swallow the Ctrl-C that stops a reply.
    interrupt::install()?;
    if let Some(h) = history {
        // A missing history file is the first session, not an error.
        let _ = rl.load_history(h);
    }
    eprintln!(
        "{dim}metallic chat · {} · load {:.0} ms · /help for commands, Ctrl-D to leave{reset}",
        s.loaded.info.model.line(),
        s.loaded.info.load_ms
    );
    for m in s.conv.messages() {
        eprintln!("{dim}[{}] {}{reset}", m.role, m.content);
    }
    loop {
        let line = match rl.readline(">>> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) | Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the prompt"),
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(line.as_str());
        match s.command(&line) {
            Ok(Action::Exit) => break,
            Ok(Action::Output(o)) => println!("{o}"),
            Err(e) => eprintln!("error: {e:#}"),
            Ok(Action::Say(text)) => {
                let stdout = std::io::stdout();
                let mut obs = |t: &str, _: &_, _: &_| {
                    if !t.is_empty() {
                        let mut out = stdout.lock();
                        let _ = out.write_all(t.as_bytes());
                        let _ = out.flush();
                    }
                };
                match reply(s, &text, &mut obs) {
                    Ok(g) => {
                        println!();
                        if g.stop_reason == StopReason::Interrupted {
                            eprintln!("{dim}[interrupted]{reset}");
                        }
                        if let Some((g, t)) = &s.last {
                            eprintln!(
                                "{dim}[{}]{reset}",
                                turn_line(g, t, s.loaded.st.n_past, s.loaded.st.capacity)
                            );
                        }
                    }
                    Err(e) => eprintln!("\nerror: {e:#}"),
                }
            }
        }
    }
    if let Some(h) = history {
        rl.save_history(h)
            .with_context(|| format!("writing the history to {}", h.display()))?;
    }
    Ok(())
}

fn tui_loop<B: Backend>(s: &mut Session<'_, B>) -> Result<()> {
    let mut screen = Screen::start()?;
    let mut view = View::new(&s.loaded.info, s.loaded.ex.is_recording());
    view.progress.capacity = s.loaded.st.capacity;
    view.info_lines = vec![("sampling".into(), sampling_line(&s.opts.sampler))];
    for m in s.conv.messages() {
        view.entries
            .push((Role::from_name(&m.role), m.content.clone()));
    }
    let mut editor = LineEditor::default();
    view.status = "Enter sends · /help · Ctrl-C stops a reply · Ctrl-D or Ctrl-C leaves".into();
    loop {
        view.input = Some((editor.text.clone(), editor.cursor));
        screen.draw(&view)?;
        let ev = event::read().context("reading the keyboard")?;
        let Event::Key(k) = ev else { continue };
        if k.kind == KeyEventKind::Release {
            continue;
        }
        let line = match editor.key(k) {
            Edit::None => continue,
            Edit::Interrupt | Edit::Eof => break,
            Edit::Submit(l) if l.trim().is_empty() => continue,
            Edit::Submit(l) => l,
        };
        view.input = Some((String::new(), 0));
        match s.command(&line) {
            Ok(Action::Exit) => break,
            Ok(Action::Output(o)) => {
                if line.starts_with("/load") || line.starts_with("/reset") {
                    // Show the conversation as it now is.
                    view.entries = s
                        .conv
                        .messages()
                        .iter()
                        .map(|m| (Role::from_name(&m.role), m.content.clone()))
                        .collect();
                }
                view.entries.push((Role::User, line.clone()));
                view.note(o);
            }
            Err(e) => view.note(format!("error: {e:#}")),
            Ok(Action::Say(text)) => {
                view.entries.push((Role::User, text.clone()));
                view.generating = true;
                view.entries.push((Role::Assistant, String::new()));
                let opts = s.opts.clone();
                let r = run_live(&mut screen, &mut view, &opts, |obs| reply(s, &text, obs));
                match r {
                    Ok(_) => {
                        view.memory = RunInfo::memory_line(s.loaded.ex.backend.memory().as_ref());
                        if let Some((g, t)) = &s.last {
                            view.status = turn_line(g, t, s.loaded.st.n_past, s.loaded.st.capacity);
                        }
                    }
                    Err(e) => view.note(format!("error: {e:#}")),
                }
            }
        }
    }
    Ok(())
}

pub fn run(args: ChatArgs) -> Result<()> {
    if args.output_format == OutputFormat::Json {
        bail!("--output-format json is for generate; chat shows text or tui");
    }
    let path = resolve_model(args.model.model.as_deref())?;
    let file = open_model(&path, args.model.device, args.model.no_huge_pages)?;
    // Ctrl-C is installed by the loop: after rustyline's editor (plain), or
    // not at all (tui: raw mode delivers it as a key).
    on_device(args.model.device, args.model.threads, Job { args, file })
}
