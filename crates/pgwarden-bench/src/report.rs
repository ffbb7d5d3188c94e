//! The Markdown page (docs/BENCHMARKS.md) and the JSON file of raw results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::e2e::{Lib, Query, LANE_CONNS, POINT_SQL, POOL_SIZE, ROWS, TP_TASKS};
use crate::poolonly::{PoolLib, Shape, POOL_OBJECTS};
use crate::util::{join, median, Cfg, Sample};

/// Hand-written notes appended to the generated page (method details, analysis, caveats).
const NOTES: &str = include_str!("notes.md");

/// Where and when the run happened.
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) mem: String,
    pub(crate) kernel: String,
    pub(crate) date: String,
    pub(crate) commit: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

fn cmd(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    pub(crate) fn probe(load_before: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            cpu: field(&cpuinfo, "model name"),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem: field(&meminfo, "MemTotal"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: cmd("git", &["rev-parse", "--short", "HEAD"]),
            load_before,
            load_after: loadavg(),
        }
    }
}

pub(crate) struct Report<'a> {
    pub(crate) cfg: Cfg,
    pub(crate) command: String,
    pub(crate) server_version: &'a str,
    pub(crate) machine: Machine,
    pub(crate) elapsed: Duration,
    pub(crate) orders: Vec<Vec<String>>,
    pub(crate) results: &'a BTreeMap<String, Vec<Sample>>,
}

/// A per-round comparison of two scenarios.
pub(crate) struct Cmp {
    pub(crate) per_round: Vec<f64>,
    pub(crate) median: f64,
    pub(crate) wins: usize,
}

impl Cmp {
    fn from_rounds(per_round: Vec<f64>, higher: bool) -> Self {
        let wins = per_round
            .iter()
            .filter(|r| if higher { **r > 1.0 } else { **r < 1.0 })
            .count();
        Self {
            median: median(per_round.clone()),
            wins,
            per_round,
        }
    }
    fn json(&self) -> serde_json::Value {
        json!({"per_round": self.per_round, "median": self.median, "wins": self.wins,
               "rounds": self.per_round.len()})
    }
}

fn tp(lib: &str, q: Query) -> String {
    format!("tp/{lib}/{}", q.name())
}

fn pool(lib: PoolLib, shape: Shape) -> String {
    format!("pool/{}/{}", lib.name(), shape.name())
}

/// One target line: what, the measured median (and rounds won), met or not.
struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

impl Report<'_> {
    fn get(&self, name: &str) -> Option<&Vec<Sample>> {
        self.results.get(name).filter(|v| !v.is_empty())
    }

    /// `f(a) / f(b)` per round; a "win" is a ratio above 1 when `higher`, else below.
    fn cmp(&self, a: &str, b: &str, f: impl Fn(&Sample) -> f64, higher: bool) -> Option<Cmp> {
        let (a, b) = (self.get(a)?, self.get(b)?);
        let per_round = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
        Some(Cmp::from_rounds(per_round, higher))
    }

    /// pgwarden's rate over the faster of deadpool and bb8, per round.
    fn vs_fastest_pool(&self, shape: Shape) -> Option<Cmp> {
        let p = self.get(&pool(PoolLib::Pgwarden, shape))?;
        let d = self.get(&pool(PoolLib::Deadpool, shape))?;
        let b = self.get(&pool(PoolLib::Bb8, shape))?;
        let per_round = (0..p.len())
            .map(|i| p[i].per_sec() / d[i].per_sec().max(b[i].per_sec()))
            .collect();
        Some(Cmp::from_rounds(per_round, true))
    }

    fn med(&self, name: &str, f: impl Fn(&Sample) -> f64) -> f64 {
        self.get(name)
            .map_or(f64::NAN, |v| median(v.iter().map(f).collect()))
    }

    fn peak(&self, name: &str) -> Option<i64> {
        self.get(name)?.iter().filter_map(|s| s.peak_conns).max()
    }

    fn targets(&self) -> Vec<Target> {
        let mut v = Vec::new();
        let ratio = |c: &Cmp| format!("{:.3} (won {}/{})", c.median, c.wins, c.per_round.len());
        for q in Query::ALL {
            for (peer, min, most) in [
                ("deadpool", 1.0, true),
                ("bb8", 1.5, false),
                ("sqlx", 1.5, false),
                ("raw", 0.95, false),
            ] {
                if let Some(c) = self.cmp(&tp("pgwarden", q), &tp(peer, q), Sample::per_sec, true) {
                    let rounds = c.per_round.len();
                    let met = c.median >= min && (!most || c.wins * 2 > rounds);
                    v.push(Target {
                        what: format!(
                            "tp {}: pgwarden / {peer} ≥ {min}{}",
                            q.name(),
                            if most { ", winning most rounds" } else { "" }
                        ),
                        measured: ratio(&c),
                        met: Some(met),
                    });
                }
            }
            if let Some(c) = self.cmp(
                &tp("pgwarden", q),
                &tp("deadpool", q),
                |s| s.q_us(0.99),
                false,
            ) {
                v.push(Target {
                    what: format!(
                        "tp {}: p99 latency (acquire wait + statement) pgwarden / deadpool ≤ 1",
                        q.name()
                    ),
                    measured: ratio(&c),
                    met: Some(c.median <= 1.0),
                });
            }
        }
        for q in Query::ALL {
            for (peer, min) in [("raw-pipelined", 0.9), ("deadpool", 3.0)] {
                if let Some(c) =
                    self.cmp(&tp("pgwarden-lane", q), &tp(peer, q), Sample::per_sec, true)
                {
                    v.push(Target {
                        what: format!(
                            "tp {}: pgwarden-lane ({LANE_CONNS} connections) / {peer} ≥ {min}",
                            q.name()
                        ),
                        measured: ratio(&c),
                        met: Some(c.median >= min),
                    });
                }
            }
        }
        if let Some(c) = self.vs_fastest_pool(Shape::Tasks(256)) {
            v.push(Target {
                what: format!(
                    "pool-only 256 on {POOL_OBJECTS}: pgwarden / faster of deadpool, bb8 ≥ 1.5"
                ),
                measured: ratio(&c),
                met: Some(c.median >= 1.5),
            });
        }
        let un = pool(PoolLib::Pgwarden, Shape::Uncontended);
        if self.get(&un).is_some() {
            let ns = self.med(&un, Sample::ns_per_op);
            v.push(Target {
                what: "pool-only uncontended get + drop ≤ 100 ns".to_owned(),
                measured: format!("{ns:.0} ns"),
                met: Some(ns <= 100.0),
            });
        }
        let peaks: Vec<i64> = self
            .results
            .iter()
            .filter(|(k, _)| k.contains("/pgwarden"))
            .filter_map(|(k, _)| self.peak(k))
            .collect();
        if let Some(p) = peaks.iter().max() {
            v.push(Target {
                what: format!("pgwarden server connections ≤ configured maximum ({POOL_SIZE})"),
                measured: format!("peak {p}"),
                met: Some(*p <= i64::from(POOL_SIZE)),
            });
        }
        v
    }

    pub(crate) fn markdown(&self) -> String {
        let mut o = String::new();
        let c = self.cfg;
        let m = &self.machine;
        let _ = writeln!(o, "# Benchmarks\n\n```text\n{}\n```\n", self.command);
        let _ = writeln!(
            o,
            "Regenerates this page and its raw figures (JSON, every round). `--quick` is a short run \
             written to `target/` unless `--out` is given. Other options: `--rounds N --seed N \
             --only SUBSTR[,SUBSTR…] --out PATH.md` (the JSON goes beside it).\n"
        );
        let _ =
            writeln!(
            o,
            "**Machine:** {} × {} ({} logical CPUs), {} RAM, Linux {}; PostgreSQL {} on the same \
             machine (loopback TCP); 2 tokio workers. **Run:** {}, commit `{}`, took {:.0} s; load \
             average (1/5/15 min) {} before, {} after — other builds share the machine.\n",
            m.cores,
            if m.cpu.is_empty() { "unknown CPU" } else { &m.cpu },
            m.cores,
            m.mem,
            m.kernel,
            self.server_version,
            m.date,
            m.commit,
            self.elapsed.as_secs_f64(),
            m.load_before,
            m.load_after
        );
        let _ = writeln!(
            o,
            "**Method:** one process; {} rounds, every scenario once per round in a shuffled order \
             (seed {}); end-to-end: {} ms warm-up + {} ms window, pool-only: {} ms + {} ms. Only \
             operations inside the window count. Ratios are taken per round, then their median; \
             \"won\" counts the rounds pgwarden was ahead.\n",
            c.rounds,
            c.seed,
            c.e2e.warmup.as_millis(),
            c.e2e.window.as_millis(),
            c.pool.warmup.as_millis(),
            c.pool.window.as_millis()
        );
        self.targets_md(&mut o);
        self.latency_md(&mut o);
        self.throughput_md(&mut o);
        self.pool_md(&mut o);
        let _ = writeln!(o, "\n<details><summary>Round orders</summary>\n");
        for (i, ord) in self.orders.iter().enumerate() {
            let _ = writeln!(o, "{}. {}", i + 1, ord.join(", "));
        }
        let _ = writeln!(o, "\n</details>\n");
        o.push_str(NOTES);
        o
    }

    fn targets_md(&self, o: &mut String) {
        let t = self.targets();
        if t.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "## Targets\n\n| target | measured (median) | met |\n|---|---|---|"
        );
        for t in t {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(o, "| {} | {} | {met} |", t.what, t.measured);
        }
    }

    fn latency_md(&self, o: &mut String) {
        if !self.results.keys().any(|k| k.starts_with("lat/")) {
            return;
        }
        let _ = writeln!(
            o,
            "\n## 1. Statement cache: one task, sequential `PoolManager::query_one` (pool 1..{POOL_SIZE})\n"
        );
        self.e2e_header(o);
        for q in Query::ALL {
            for lib in ["pgwarden-cached", "pgwarden-uncached", "raw"] {
                self.row(o, &format!("lat/{lib}/{}", q.name()));
            }
        }
        let _ = writeln!(
            o,
            "\n| query | mean latency, cache on / off (per round) | median | rounds cache won |\n|---|---|---:|---:|"
        );
        for q in Query::ALL {
            let (a, b) = (
                format!("lat/pgwarden-cached/{}", q.name()),
                format!("lat/pgwarden-uncached/{}", q.name()),
            );
            if let Some(m) = self.cmp(&a, &b, Sample::mean_us, false) {
                let _ = writeln!(
                    o,
                    "| {} | {} | **{:.3}** | {}/{} |",
                    q.name(),
                    join(&m.per_round, |x| format!("{x:.3}")),
                    m.median,
                    m.wins,
                    m.per_round.len()
                );
            }
        }
    }

    fn e2e_header(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "| scenario | ops/s (median) | p50 µs | p99 µs | p99.9 µs | client CPU µs/op | server CPU µs/op | peak server conns | tasks starved | ops/s per round |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
    }

    fn row(&self, o: &mut String, name: &str) {
        let Some(v) = self.get(name) else { return };
        let rates: Vec<f64> = v.iter().map(Sample::per_sec).collect();
        let _ = writeln!(
            o,
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {:.0} | {} |",
            median(rates.clone()),
            self.med(name, |s| s.q_us(0.5)),
            self.med(name, |s| s.q_us(0.99)),
            self.med(name, |s| s.q_us(0.999)),
            self.med(name, Sample::client_ns_per_op) / 1000.0,
            self.med(name, Sample::server_ns_per_op) / 1000.0,
            self.peak(name).map_or("–".to_owned(), |p| p.to_string()),
            self.med(name, |s| s.starved as f64),
            join(&rates, |x| format!("{x:.0}"))
        );
    }

    fn throughput_md(&self, o: &mut String) {
        if !self.results.keys().any(|k| k.starts_with("tp/")) {
            return;
        }
        let _ = writeln!(
            o,
            "\n## 2. End-to-end: {TP_TASKS} tasks on {POOL_SIZE} connections\n\n\
             `pgwarden-lane` (the pipelined lane) and `raw-pipelined` (tokio-postgres clients \
             shared by every task) use {LANE_CONNS} server connections.\n"
        );
        self.e2e_header(o);
        for q in Query::ALL {
            for lib in Lib::TP {
                self.row(o, &tp(lib.name(), q));
            }
        }
        let _ = writeln!(
            o,
            "\n| query | ratio (ops/s) | per round | median | rounds pgwarden won |\n|---|---|---|---:|---:|"
        );
        for q in Query::ALL {
            let mut pairs: Vec<(&str, &str)> = Lib::TP[1..]
                .iter()
                .map(|l| ("pgwarden", l.name()))
                .collect();
            pairs.push(("deadpool", "raw"));
            pairs.push(("pgwarden-lane", "raw-pipelined"));
            pairs.push(("pgwarden-lane", "deadpool"));
            pairs.push(("raw-pipelined", "deadpool"));
            for (a, b) in pairs {
                if let Some(m) = self.cmp(&tp(a, q), &tp(b, q), Sample::per_sec, true) {
                    let won = if a == "pgwarden" {
                        format!("{}/{}", m.wins, m.per_round.len())
                    } else {
                        "–".to_owned()
                    };
                    let _ = writeln!(
                        o,
                        "| {} | {a} / {b} | {} | **{:.3}** | {won} |",
                        q.name(),
                        join(&m.per_round, |x| format!("{x:.3}")),
                        m.median
                    );
                }
            }
        }
    }

    fn pool_md(&self, o: &mut String) {
        if !self.results.keys().any(|k| k.starts_with("pool/")) {
            return;
        }
        let _ = writeln!(
            o,
            "\n## 3. Pool-only: dummy connections, get + drop, {POOL_OBJECTS} objects\n\n\
             | scenario | M ops/s (median) | ns/op (wall) | client CPU ns/op | M ops/s per round |\n|---|---:|---:|---:|---|"
        );
        for shape in Shape::ALL {
            for lib in PoolLib::ALL {
                let name = pool(lib, shape);
                let Some(v) = self.get(&name) else { continue };
                let rates: Vec<f64> = v.iter().map(|s| s.per_sec() / 1e6).collect();
                let _ = writeln!(
                    o,
                    "| {name} | {:.2} | {:.0} | {:.0} | {} |",
                    median(rates.clone()),
                    self.med(&name, Sample::ns_per_op),
                    self.med(&name, Sample::client_ns_per_op),
                    join(&rates, |x| format!("{x:.2}"))
                );
            }
        }
        let _ = writeln!(
            o,
            "\n| shape | ratio (ops/s) | per round | median | rounds pgwarden won |\n|---|---|---|---:|---:|"
        );
        for shape in Shape::ALL {
            let mut rows: Vec<(String, Option<Cmp>)> = [PoolLib::Deadpool, PoolLib::Bb8]
                .iter()
                .map(|peer| {
                    (
                        format!("pgwarden / {}", peer.name()),
                        self.cmp(
                            &pool(PoolLib::Pgwarden, shape),
                            &pool(*peer, shape),
                            Sample::per_sec,
                            true,
                        ),
                    )
                })
                .collect();
            rows.push((
                "pgwarden / faster peer".to_owned(),
                self.vs_fastest_pool(shape),
            ));
            for (label, c) in rows {
                let Some(m) = c else { continue };
                let _ = writeln!(
                    o,
                    "| {} | {label} | {} | **{:.3}** | {}/{} |",
                    shape.name(),
                    join(&m.per_round, |x| format!("{x:.3}")),
                    m.median,
                    m.wins,
                    m.per_round.len()
                );
            }
        }
    }

    pub(crate) fn json(&self, counters: serde_json::Value) -> serde_json::Value {
        let mut scen = serde_json::Map::new();
        for (name, v) in self.results {
            let rounds: Vec<_> = v
                .iter()
                .map(|s| {
                    json!({
                        "ops": s.ops,
                        "ops_per_sec": s.per_sec(),
                        "ns_per_op": s.ns_per_op(),
                        "p50_us": s.q_us(0.5),
                        "p95_us": s.q_us(0.95),
                        "p99_us": s.q_us(0.99),
                        "p999_us": s.q_us(0.999),
                        "max_us": s.hist.max() as f64 / 1000.0,
                        "mean_us": s.mean_us(),
                        "client_cpu_s": s.client_cpu_s,
                        "machine_cpu_s": s.machine_cpu_s,
                        "client_cpu_ns_per_op": s.client_ns_per_op(),
                        "server_cpu_ns_per_op": s.server_ns_per_op(),
                        "peak_server_conns": s.peak_conns,
                        "tasks_starved": s.starved,
                    })
                })
                .collect();
            scen.insert(
                name.clone(),
                json!({
                    "median_ops_per_sec": self.med(name, Sample::per_sec),
                    "median_p99_us": self.med(name, |s| s.q_us(0.99)),
                    "peak_server_conns": self.peak(name),
                    "rounds": rounds,
                }),
            );
        }
        let mut cmps = serde_json::Map::new();
        for q in Query::ALL {
            for lib in &Lib::TP[1..] {
                if let Some(c) = self.cmp(
                    &tp("pgwarden", q),
                    &tp(lib.name(), q),
                    Sample::per_sec,
                    true,
                ) {
                    cmps.insert(
                        format!("tp/{}/pgwarden_over_{}", q.name(), lib.name()),
                        c.json(),
                    );
                }
            }
        }
        for shape in Shape::ALL {
            if let Some(c) = self.vs_fastest_pool(shape) {
                cmps.insert(
                    format!("pool/{}/pgwarden_over_faster_peer", shape.name()),
                    c.json(),
                );
            }
        }
        let targets: Vec<_> = self
            .targets()
            .into_iter()
            .map(|t| json!({"target": t.what, "measured": t.measured, "met": t.met}))
            .collect();
        let m = &self.machine;
        json!({
            "command": self.command,
            "machine": {
                "cpu": m.cpu, "logical_cpus": m.cores, "mem": m.mem, "kernel": m.kernel,
                "date": m.date, "commit": m.commit,
                "load_before": m.load_before, "load_after": m.load_after,
            },
            "config": {
                "rounds": self.cfg.rounds,
                "e2e_warmup_ms": self.cfg.e2e.warmup.as_millis() as u64,
                "e2e_window_ms": self.cfg.e2e.window.as_millis() as u64,
                "pool_warmup_ms": self.cfg.pool.warmup.as_millis() as u64,
                "pool_window_ms": self.cfg.pool.window.as_millis() as u64,
                "seed": self.cfg.seed,
                "quick": self.cfg.quick,
                "tokio_workers": 2,
                "throughput_tasks": TP_TASKS,
                "pool_size": POOL_SIZE,
                "pool_only_objects": POOL_OBJECTS,
                "point_sql": POINT_SQL,
                "rows": ROWS,
                "server_version": self.server_version,
            },
            "elapsed_s": self.elapsed.as_secs_f64(),
            "round_orders": self.orders,
            "targets": targets,
            "scenarios": scen,
            "comparisons": cmps,
            "pgwarden_counters": counters,
        })
    }
}
