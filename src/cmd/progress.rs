//! How long CLI work shows its progress: a bar on a terminal; one line per
//! build start and end (target, builder, elapsed) on stderr when stderr is
//! not a terminal (a CI log, `kiln build 2>&1 | tee`), so a piped run is
//! never silent for minutes; nothing with `--json` (stdout is for the
//! program reading it, stderr keeps only failures).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use kiln::pipeline::{Event, Outcome};

enum Mode {
    Bar(indicatif::ProgressBar),
    Lines,
    Quiet,
}

pub struct Progress {
    mode: Mode,
    /// Each running arch build and when it started.
    running: Mutex<BTreeMap<String, Instant>>,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        let mode = if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} arch builds  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Show one event of the run.
    pub fn event(&self, e: Event) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        match e {
            Event::Planned { arch_builds } => match &self.mode {
                Mode::Bar(bar) => bar.set_length(arch_builds as u64),
                Mode::Lines => eprintln!("kiln: {arch_builds} arch builds planned"),
                Mode::Quiet => {}
            },
            Event::Started { target, builder } => {
                if let Mode::Lines = self.mode {
                    eprintln!("kiln: started {target} ({builder})");
                }
                running.insert(target, Instant::now());
                if let Mode::Bar(bar) = &self.mode {
                    bar.set_message(running.keys().cloned().collect::<Vec<_>>().join(", "));
                }
            }
            Event::Finished { target, outcome } => {
                let elapsed = running.remove(&target).map(|t| t.elapsed().as_secs());
                let line = finished_line(&target, &outcome, elapsed);
                match &self.mode {
                    Mode::Bar(bar) => {
                        bar.inc(1);
                        bar.set_message(running.keys().cloned().collect::<Vec<_>>().join(", "));
                        if let Outcome::Failed { .. } = outcome {
                            bar.println(line);
                        }
                    }
                    Mode::Lines => eprintln!("kiln: {line}"),
                    Mode::Quiet => {
                        if let Outcome::Failed { .. } = outcome {
                            eprintln!("kiln: {line}");
                        }
                    }
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

fn finished_line(target: &str, outcome: &Outcome, elapsed: Option<u64>) -> String {
    let took = elapsed.map(|s| format!(" in {s}s")).unwrap_or_default();
    match outcome {
        Outcome::Failed { kind, error } => format!("FAILED ({kind}) {target}{took}: {error}"),
        Outcome::Built { .. } => format!("built {target}{took}"),
        Outcome::Adopted { from, .. } => format!("adopted {target} from {from}{took}"),
        Outcome::Unchanged { .. } => format!("unchanged {target}"),
        Outcome::NoBuilder { reason } => format!("no builder for {target}: {reason}"),
        Outcome::Planned => format!("planned {target}"),
    }
}
