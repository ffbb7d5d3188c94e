//! Quiet by default: the library's warnings are counted and summarised in one line at the end
//! (an unreachable host makes the pool's connect loop warn on every attempt, which would bury
//! the one line that matters). `-v` (or `PGWARDEN_LOG`) prints them as they happen.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Warnings and errors logged while the CLI ran, by message.
#[derive(Clone, Default)]
pub(crate) struct Summary {
    /// Lock rule: held only to bump a counter or to print.
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Summary {
    /// One line on stderr when anything was counted: how many, the commonest messages, and
    /// how to see them.
    pub(crate) fn print_if_any(&self) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let total: u64 = counts.values().sum();
        if total == 0 {
            return;
        }
        let mut top: Vec<(&String, &u64)> = counts.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let shown: Vec<String> = top
            .iter()
            .take(3)
            .map(|(m, n)| format!("{n} × \"{m}\""))
            .collect();
        let more = if top.len() > 3 { ", …" } else { "" };
        eprintln!(
            "note: the library logged {total} warning(s): {}{more}; run with -v to see them",
            shown.join(", ")
        );
    }
}

struct Counter(Summary);

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::WARN {
            return;
        }
        let mut m = Message::default();
        event.record(&mut m);
        // Messages are short constant texts in the library; cap them anyway.
        let key: String = m.0.chars().take(60).collect();
        *self
            .0
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(0) += 1;
    }
}

/// Installs the subscriber: printed logs with `-v` or `PGWARDEN_LOG`, else the counter.
pub(crate) fn init(verbose: u8) -> Summary {
    let summary = Summary::default();
    let explicit = EnvFilter::try_from_env("PGWARDEN_LOG").ok();
    if verbose == 0 && explicit.is_none() {
        tracing_subscriber::registry()
            .with(Counter(summary.clone()).with_filter(EnvFilter::new("warn")))
            .init();
        return summary;
    }
    let filter = explicit.unwrap_or_else(|| {
        EnvFilter::new(match verbose {
            0 | 1 => "info",
            2 => "debug",
            _ => "trace",
        })
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter),
        )
        .init();
    summary
}
