//! Measuring machinery shared by every scenario: windows, the seeded generator, samples, CPU
//! accounting and the task runner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub(crate) type AnyErr = Box<dyn std::error::Error + Send + Sync>;

/// Turns a peer's error (some are `Debug` only) into ours.
pub(crate) fn err<E: std::fmt::Debug>(e: E) -> AnyErr {
    format!("{e:?}").into()
}

/// Timing of one scenario run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) window: Duration,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Cfg {
    pub(crate) rounds: usize,
    /// End-to-end scenarios (a server round trip per operation).
    pub(crate) e2e: Timing,
    /// Pool-only scenarios (no I/O: millions of operations per second, shorter windows do).
    pub(crate) pool: Timing,
    pub(crate) seed: u64,
    pub(crate) quick: bool,
}

/// The measuring window of one scenario run: operations started at or after `start` and
/// finished before `end` count.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

impl Window {
    pub(crate) fn new(t: Timing) -> Self {
        let start = Instant::now() + t.warmup;
        Self {
            start,
            end: start + t.window,
        }
    }
}

/// xorshift64*: a per-task generator of ids and the round shuffles (no shared state).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn id(&mut self, rows: i32) -> i32 {
        (self.next() % rows as u64) as i32 + 1
    }
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// One scenario's outcome in one round.
pub(crate) struct Sample {
    pub(crate) ops: u64,
    pub(crate) window: Duration,
    /// Per-operation latency in ns (empty for pool-only scenarios: a clock read per operation
    /// would cost as much as the operation).
    pub(crate) hist: Histogram<u64>,
    /// CPU seconds used in the window: this process (getrusage), the whole machine (/proc/stat).
    pub(crate) client_cpu_s: f64,
    pub(crate) machine_cpu_s: f64,
    /// Most server connections seen at once for this library (pg_stat_activity, sampled).
    pub(crate) peak_conns: Option<i64>,
    /// Tasks that completed no operation in the window (starved by an unfair queue).
    pub(crate) starved: usize,
}

impl Sample {
    pub(crate) fn per_sec(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }
    pub(crate) fn ns_per_op(&self) -> f64 {
        self.window.as_nanos() as f64 / self.ops.max(1) as f64
    }
    pub(crate) fn q_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub(crate) fn mean_us(&self) -> f64 {
        self.hist.mean() / 1000.0
    }
    /// Client CPU ns per operation (getrusage of this process).
    pub(crate) fn client_ns_per_op(&self) -> f64 {
        self.client_cpu_s * 1e9 / self.ops.max(1) as f64
    }
    /// CPU ns per operation used by the rest of the machine (PostgreSQL, mostly).
    pub(crate) fn server_ns_per_op(&self) -> f64 {
        (self.machine_cpu_s - self.client_cpu_s).max(0.0) * 1e9 / self.ops.max(1) as f64
    }
}

/// This process's CPU time (user + system), from getrusage.
fn own_cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// The machine's busy CPU time, from /proc/stat (100 Hz ticks).
fn machine_cpu_s() -> f64 {
    let busy = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let line = s.lines().next()?.to_owned();
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = f.iter().take(8).sum();
        let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
        Some(total - idle)
    });
    busy.map_or(f64::NAN, |t| t as f64 / 100.0)
}

/// Samples CPU use over the window (a task of its own, off the hot loops).
fn sample_cpu(w: Window) -> tokio::task::JoinHandle<(f64, f64)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(w.start.into()).await;
        let (c0, m0) = (own_cpu_s(), machine_cpu_s());
        let t0 = Instant::now();
        tokio::time::sleep_until(w.end.into()).await;
        let (c1, m1) = (own_cpu_s(), machine_cpu_s());
        // Normalise to the nominal window (the sampler may wake a little late).
        let scale = (w.end - w.start).as_secs_f64() / t0.elapsed().as_secs_f64();
        ((c1 - c0) * scale, (m1 - m0) * scale)
    })
}

pub(crate) fn new_hist() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// What one task reports: operations counted in the window and their latencies (ns).
pub(crate) type TaskOut = Result<(u64, Vec<u64>), AnyErr>;

/// Runs `tasks` copies of `body` (each gets its index; all start together behind a barrier) and
/// merges what they report, with an outer bound so a hang fails loudly instead of stalling.
/// `peak` samples the library's server connections over the run, when given.
pub(crate) async fn run_tasks<F, Fut>(
    t: Timing,
    tasks: usize,
    peak: Option<crate::conns::PeakSampler>,
    body: F,
) -> Result<Sample, AnyErr>
where
    F: Fn(usize, Window, Arc<tokio::sync::Barrier>) -> Fut,
    Fut: std::future::Future<Output = TaskOut> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let w = Window::new(t);
    let cpu = sample_cpu(w);
    let peak = peak.map(|p| p.spawn(w.end));
    let handles: Vec<_> = (0..tasks)
        .map(|i| tokio::spawn(body(i, w, Arc::clone(&barrier))))
        .collect();
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let bound = w.end.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
    let mut ops = 0;
    let mut starved = 0;
    let mut hist = new_hist();
    let joined = tokio::time::timeout(bound, async {
        for h in handles {
            let (n, l) = h.await??;
            ops += n;
            starved += usize::from(n == 0);
            for v in l {
                hist.saturating_record(v.max(1));
            }
        }
        Ok::<_, AnyErr>(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => {
            for a in aborts {
                a.abort();
            }
            return Err("scenario did not finish within its outer bound".into());
        }
    }
    let (client_cpu_s, machine_cpu_s) = cpu.await?;
    let peak_conns = match peak {
        Some(h) => Some(h.await??),
        None => None,
    };
    Ok(Sample {
        ops,
        window: t.window,
        hist,
        client_cpu_s,
        machine_cpu_s,
        peak_conns,
        starved,
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn join(v: &[f64], f: impl Fn(f64) -> String) -> String {
    v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(" / ")
}
