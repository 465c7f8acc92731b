//! Progress on stderr: a spinner with the current stage and its elapsed time on a terminal
//! (indicatif), one line per stage otherwise; nothing with `-q`; `-v` also prints each
//! finished stage's duration.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static LEVEL: AtomicU8 = AtomicU8::new(1);

/// 0 = quiet, 1 = normal, 2 = verbose.
pub(crate) fn set_level(quiet: bool, verbose: u8) {
    let level = if quiet { 0 } else { 1 + verbose.min(1) };
    LEVEL.store(level, Ordering::Relaxed);
}

pub(crate) fn level() -> u8 {
    LEVEL.load(Ordering::Relaxed)
}

/// Reports stages as they start; the previous stage ends when the next one starts (or when
/// the reporter is dropped).
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    current: Option<(String, Instant)>,
}

impl Progress {
    pub(crate) fn new() -> Self {
        let bar = (level() > 0 && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self {
            bar,
            start: Instant::now(),
            current: None,
        }
    }

    fn finish_current(&mut self) {
        if let Some((name, at)) = self.current.take() {
            if level() >= 2 {
                let line = format!("  done: {name} ({:.2} s)", at.elapsed().as_secs_f64());
                match &self.bar {
                    Some(b) => b.println(line),
                    #[allow(clippy::print_stderr)]
                    None => eprintln!("{line}"),
                }
            }
        }
    }

    /// Prints a line above the spinner (or on its own line without a terminal).
    pub(crate) fn note(&self, line: &str) {
        if level() == 0 {
            return;
        }
        let line = &*cellfate::names::escape_terminal_text(line);
        match &self.bar {
            Some(b) => b.println(line),
            #[allow(clippy::print_stderr)]
            None => eprintln!("{line}"),
        }
    }

    /// A new stage starts.
    pub(crate) fn stage(&mut self, name: &str) {
        let name = &*cellfate::names::escape_for_terminal(name);
        self.finish_current();
        if level() > 0 {
            match &self.bar {
                Some(b) => b.set_message(name.to_string()),
                #[allow(clippy::print_stderr)]
                None => eprintln!("[{:.2}s] {name}", self.start.elapsed().as_secs_f64()),
            }
        }
        self.current = Some((name.to_string(), Instant::now()));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish_current();
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// One `-v` line about a finished stage: its duration and, when the OS reports it (Linux
/// `VmHWM`; not for the sub-stages timed inside a stage), the peak memory so far. An unknown
/// or non-finite peak is left out, never printed as `NaN`.
pub(crate) fn timing_line(stage: &str, seconds: f64, peak_mb: Option<f64>) -> String {
    match peak_mb.filter(|m| m.is_finite()) {
        Some(mb) => format!("  {stage:<24} {seconds:>8.2} s   peak {mb:>7.0} MB"),
        None => format!("  {stage:<24} {seconds:>8.2} s"),
    }
}

/// A bar counting finished samples of a batch (terminal only, not with `-q`).
pub(crate) fn counter(n: usize) -> Option<ProgressBar> {
    (level() > 0 && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(n as u64);
        b.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} samples {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    })
}

/// One line about a finished sample (when not quiet and not on a terminal bar).
pub(crate) fn sample_done(bar: Option<&ProgressBar>, line: &str) {
    let line = &*cellfate::names::escape_for_terminal(line);
    match bar {
        Some(b) => {
            b.inc(1);
            b.set_message(line.to_string());
        }
        #[allow(clippy::print_stderr)]
        None if level() > 0 => eprintln!("{line}"),
        None => {}
    }
}

/// Names from the data joined by `", "` for the terminal, each escaped
/// ([`cellfate::names::escape_for_terminal`]: no control character reaches the terminal raw).
pub(crate) fn names(list: &[String]) -> String {
    list.iter()
        .map(|n| cellfate::names::escape_for_terminal(n))
        .collect::<Vec<_>>()
        .join(", ")
}
