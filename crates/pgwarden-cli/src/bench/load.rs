//! Driving the load: N tasks calling through the manager until the time or the count runs
//! out, Ctrl-C, or every call failing; a live view while it runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgwarden::PoolManager;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::workload::Job;
use super::Say;
use crate::ui::{self, Ui};

/// How often the live view refreshes (and the every-call-failed check runs).
const TICK: Duration = Duration::from_millis(250);
/// How often `--watch` prints the status block.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How often a task merges its latencies into the shared histograms.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Failures with not one success before the run gives up (a bad `--sql`).
const GIVE_UP_AFTER: u64 = 20;
/// Calls in flight when the load stops get this long to finish before they are dropped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// When the load ends.
pub(crate) struct Plan {
    pub(crate) concurrency: u32,
    pub(crate) duration: Option<Duration>,
    pub(crate) count: Option<u64>,
    pub(crate) watch: bool,
}

/// What ran.
pub(crate) struct Outcome {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) elapsed: Duration,
    /// Per-call latency in microseconds, retries included, as the caller saw it.
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) first_error: Option<String>,
    pub(crate) interrupted: bool,
    /// Stopped early because every call failed.
    pub(crate) gave_up: bool,
}

impl Outcome {
    pub(crate) fn calls(&self) -> u64 {
        self.ok + self.failed
    }
}

struct Shared {
    stop: AtomicBool,
    issued: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Lock rule (both histograms): held only to merge a task's batch or to read at a tick.
    recent: Mutex<Histogram<u64>>,
    total: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) async fn run(
    db: &PoolManager,
    job: Arc<Job>,
    plan: &Plan,
    ui: &Ui,
    say: &Say,
    mut interrupted: watch::Receiver<bool>,
) -> Outcome {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
        recent: Mutex::new(histogram()),
        total: Mutex::new(histogram()),
    });
    let mut tasks = JoinSet::new();
    for i in 0..plan.concurrency {
        let (db, job, shared, count) = (db.clone(), job.clone(), shared.clone(), plan.count);
        tasks.spawn(async move { task(i, &db, &job, &shared, count).await });
    }
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let mut view = View::new(plan, ui, say);
    let mut tick = tokio::time::interval_at(started + TICK, TICK);
    let mut was_interrupted = *interrupted.borrow();
    let mut gave_up = false;
    while !was_interrupted && !tasks.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => break,
            changed = interrupted.changed() => {
                // A closed channel means no Ctrl-C listener: keep going.
                was_interrupted = changed.is_ok() && *interrupted.borrow();
            }
            _ = tasks.join_next() => {}
            _ = tick.tick() => {
                let (ok, failed) = (shared.ok.load(Relaxed), shared.failed.load(Relaxed));
                if ok == 0 && failed >= GIVE_UP_AFTER {
                    gave_up = true;
                    break;
                }
                let recent = std::mem::replace(&mut *lock(&shared.recent), histogram());
                view.update(db, started.elapsed(), ok + failed, &recent);
            }
        }
    }
    shared.stop.store(true, Relaxed);
    view.finish();
    // Calls in flight finish (each is bounded by the query timeout); past the grace they
    // are dropped, which the pool handles (cancel, rollback, or close the connection).
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let elapsed = started.elapsed();
    let latency_us = std::mem::replace(&mut *lock(&shared.total), histogram());
    let first_error = lock(&shared.first_error).take();
    Outcome {
        ok: shared.ok.load(Relaxed),
        failed: shared.failed.load(Relaxed),
        elapsed,
        latency_us,
        first_error,
        interrupted: was_interrupted,
        gave_up,
    }
}

async fn task(i: u32, db: &PoolManager, job: &Job, shared: &Shared, count: Option<u64>) {
    let mut rng = StdRng::seed_from_u64(u64::from(i) ^ u64::from(std::process::id()) << 20);
    let mut batch = histogram();
    let mut last_flush = Instant::now();
    let flush = |batch: &mut Histogram<u64>| {
        // Same bounds on both sides: adding cannot fail.
        let _ = lock(&shared.recent).add(&*batch);
        let _ = lock(&shared.total).add(&*batch);
        batch.reset();
    };
    let mut n: u64 = 0;
    while !shared.stop.load(Relaxed) {
        if count.is_some_and(|c| shared.issued.fetch_add(1, Relaxed) >= c) {
            break;
        }
        let t = Instant::now();
        let result = job.call(db, &mut rng, n).await;
        batch.saturating_record((t.elapsed().as_micros() as u64).max(1));
        n += 1;
        match result {
            Ok(()) => shared.ok.fetch_add(1, Relaxed),
            Err(e) => {
                lock(&shared.first_error).get_or_insert_with(|| e.to_string());
                shared.failed.fetch_add(1, Relaxed)
            }
        };
        if last_flush.elapsed() >= FLUSH_EVERY {
            flush(&mut batch);
            last_flush = Instant::now();
        }
    }
    flush(&mut batch);
}

/// The live view: a progress bar on a terminal, else (or with `--watch`) the status block
/// every few seconds.
struct View<'a> {
    bar: Option<ProgressBar>,
    say: &'a Say,
    ui: &'a Ui,
    by_count: bool,
    last_calls: u64,
    last_at: Duration,
    last_print: Duration,
}

impl<'a> View<'a> {
    fn new(plan: &Plan, ui: &'a Ui, say: &'a Say) -> Self {
        let watch = plan.watch || !ui.tty || ui.verbose;
        let by_count = plan.duration.is_none();
        let bar = (!watch).then(|| {
            let len = match (plan.duration, plan.count) {
                (Some(d), _) => d.as_millis() as u64,
                (None, Some(n)) => n,
                (None, None) => 0,
            };
            let bar = ProgressBar::with_draw_target(
                Some(len),
                if say.to_stderr {
                    ProgressDrawTarget::stderr()
                } else {
                    ProgressDrawTarget::stdout()
                },
            );
            let template = if by_count {
                "{elapsed:>4} [{bar:30}] {pos}/{len} calls  {msg}"
            } else {
                "{elapsed:>4} [{bar:30}] {msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            say,
            ui,
            by_count,
            last_calls: 0,
            last_at: Duration::ZERO,
            last_print: Duration::ZERO,
        }
    }

    fn update(&mut self, db: &PoolManager, at: Duration, calls: u64, recent: &Histogram<u64>) {
        let dt = (at - self.last_at).as_secs_f64().max(1e-3);
        let rate = (calls - self.last_calls) as f64 / dt;
        self.last_calls = calls;
        self.last_at = at;
        let p95 = if recent.is_empty() {
            "–".to_owned()
        } else {
            ui::ms(recent.value_at_quantile(0.95) as f64 / 1e3)
        };
        let grade = serde_json::to_value(db.metrics())
            .ok()
            .and_then(|s| s.pointer("/health/grade")?.as_str().map(str::to_owned))
            .map(|g| format!(" · grade {}", self.ui.grade(&g)))
            .unwrap_or_default();
        let rate = format!(
            "{}/s · p95 {p95}{grade}",
            ui::thousands(rate.round() as u64)
        );
        // With -n alone the bar itself counts the calls.
        let line = match (&self.bar, self.by_count) {
            (Some(_), true) => rate,
            _ => format!("{} calls · {rate}", ui::thousands(calls)),
        };
        match &self.bar {
            Some(bar) => {
                bar.set_position(if self.by_count {
                    calls
                } else {
                    at.as_millis() as u64
                });
                bar.set_message(line);
            }
            None if at - self.last_print >= WATCH_EVERY => {
                self.last_print = at;
                self.say
                    .line(&format!("[{:>5.1} s] {line}", at.as_secs_f64()));
                for l in db.status().lines() {
                    self.say.line(&format!("          {l}"));
                }
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
