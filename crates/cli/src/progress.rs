//! Progress bars every command shares (indicatif hides them off a terminal): a spinner for work
//! of unknown length, a bar over training steps, a bar over pairs, and the adapters that turn
//! the libraries' progress callbacks into bars.

use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use reward_lens_cart::progress::Event;
use reward_lens_organisms::{cache_root, BuildProgress, CachedOrganism};

/// A spinner with a message and the elapsed time.
pub fn spinner(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A bar over `total` steps labelled `label`, starting at `done`; the message shows the loss.
pub fn step_bar(label: &str, total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.set_position(done);
    bar
}

/// A bar over `total` pairs labelled `label`.
pub fn pair_bar(label: &str, total: u64) -> ProgressBar {
    count_bar(label, total, "pairs")
}

/// A bar over `total` things called `unit` (texts, epochs) labelled `label`; the message
/// follows the count.
pub fn count_bar(label: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!("{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} eta {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    bar.set_prefix(label.to_string());
    bar
}

/// A ticking bar over `total` named stages labelled `label`; the message names the stage.
pub fn stage_bar(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Draws an organism build: a spinner while its data is made, then a step bar with the loss.
#[derive(Default)]
pub struct BuildBars {
    bar: Option<ProgressBar>,
    training: bool,
}

impl BuildBars {
    pub fn update(&mut self, p: BuildProgress<'_>) {
        match p {
            BuildProgress::Preparing => self.replace(spinner("generating the organism's data")),
            BuildProgress::Step(s) => {
                if !self.training {
                    self.training = true;
                    self.replace(step_bar("training", s.total_steps as u64, s.step as u64 - 1));
                }
                if let Some(b) = &self.bar {
                    b.set_message(format!("loss {:.3}", s.loss));
                    b.set_position(s.step as u64);
                }
            }
            BuildProgress::Finishing => self.replace(spinner("evaluating and saving")),
        }
    }
    fn replace(&mut self, bar: ProgressBar) {
        if let Some(b) = self.bar.replace(bar) {
            b.finish_and_clear();
        }
    }
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// The cached organism `preset`, built under bars (saying so once) if missing.
pub fn ensure_organism(preset: &str) -> Result<CachedOrganism> {
    let root = cache_root();
    let mut bars = BuildBars::default();
    let organism = reward_lens_organisms::ensure(preset, &root, |p| {
        if let BuildProgress::Preparing = p {
            eprintln!("training the `{preset}` model organism once (cached in {})", root.display());
        }
        bars.update(p);
    });
    bars.finish();
    Ok(organism?)
}

/// Draws CART's events: a step bar per training run (running loss, Div, ensemble member), a
/// spinner for other work; notes and written files go to stderr, finished runs to stdout.
#[derive(Default)]
pub struct CartBars {
    bar: Option<ProgressBar>,
    ema: Option<f64>,
}

impl CartBars {
    pub fn update(&mut self, e: Event<'_>) {
        match e {
            Event::Training { label, total_steps } => {
                self.ema = None;
                self.replace(Some(step_bar(label, total_steps as u64, 0)));
            }
            Event::Step { step: s, steps_per_member } => {
                let l = self.ema.map_or(s.stats.loss, |e| 0.9 * e + 0.1 * s.stats.loss);
                self.ema = Some(l);
                let member =
                    if s.members > 1 { format!("member {}/{} ", s.member + 1, s.members) } else { String::new() };
                let div = s.div.map_or(String::new(), |d| format!(" Div {d:.3}"));
                if let Some(b) = &self.bar {
                    b.set_message(format!("{member}loss {l:.3}{div}"));
                    b.set_position((s.member * steps_per_member + s.stats.step) as u64);
                }
            }
            Event::Working(msg) => self.replace(Some(spinner(msg))),
            Event::Count { label, done, total } => {
                if self.bar.as_ref().is_none_or(|b| b.length() != Some(total as u64) || b.prefix() != label) {
                    self.replace(Some(step_bar(label, total as u64, 0)));
                }
                if let Some(b) = &self.bar {
                    b.set_position(done as u64);
                }
            }
            Event::Done => self.replace(None),
            Event::Note(msg) => self.println(msg),
            Event::Wrote(path) => self.println(&format!("wrote {}", path.display())),
            Event::Finished { label, summary } => match &self.bar {
                Some(b) => b.suspend(|| println!("{label}: {summary}")),
                None => println!("{label}: {summary}"),
            },
        }
    }
    fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
    fn replace(&mut self, bar: Option<ProgressBar>) {
        if let Some(b) = std::mem::replace(&mut self.bar, bar) {
            b.finish_and_clear();
        }
    }
}
