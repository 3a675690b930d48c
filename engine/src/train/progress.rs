//! The engine's only way to the terminal: progress bars when stdout is a terminal, one plain
//! line per epoch otherwise, and warnings on stderr. An embedding program can turn it off.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Where training reports to.
pub struct Progress {
    mode: Mode,
    bar: Option<ProgressBar>,
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bars,
    Lines,
    Warnings,
    Silent,
}

impl Progress {
    /// Bars on a terminal, plain lines otherwise. `prefix` starts every line (a rank tag).
    pub fn stdout(prefix: &str) -> Self {
        let mode = if std::io::stdout().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        Self {
            mode,
            bar: None,
            prefix: prefix.to_string(),
        }
    }

    /// Reports nothing (for embedding and tests).
    pub fn silent() -> Self {
        Self {
            mode: Mode::Silent,
            bar: None,
            prefix: String::new(),
        }
    }

    /// Only warnings (the ranks other than 0 of a distributed run).
    pub fn warnings_only() -> Self {
        Self {
            mode: Mode::Warnings,
            bar: None,
            prefix: String::new(),
        }
    }

    /// A line of information.
    pub fn info(&self, message: &str) {
        if !matches!(self.mode, Mode::Silent | Mode::Warnings) {
            self.println(&format!("{}{message}", self.prefix));
        }
    }

    /// A warning, on stderr.
    pub fn warn(&self, message: &str) {
        if self.mode != Mode::Silent {
            eprintln!("{}warning: {message}", self.prefix);
        }
    }

    /// Starts an epoch of `steps` steps.
    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: usize) {
        if self.mode == Mode::Bars {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix}epoch {msg} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(self.prefix.clone());
            bar.set_message(format!("{epoch}/{epochs}"));
            self.bar = Some(bar);
        }
    }

    /// Whether [`Progress::step`] shows anything (a progress bar on a terminal).
    pub fn shows_steps(&self) -> bool {
        self.bar.is_some()
    }

    /// One step done: running loss (none until one is read from the device) and throughput.
    pub fn step(&self, epoch: usize, epochs: usize, loss: Option<f64>, images_per_s: f64) {
        if let Some(bar) = &self.bar {
            let loss = loss.map_or(String::new(), |l| format!(" loss {l:.4}"));
            bar.set_message(format!("{epoch}/{epochs}{loss} {images_per_s:.0} img/s"));
            bar.inc(1);
        }
    }

    /// The epoch is over; `summary` is its one-line result.
    pub fn end_epoch(&mut self, summary: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.info(summary);
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }
}
