//! Running the binary with a controlled environment.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgwarden_testdb::PgServer;

pub(crate) const SECRET: &str = "Cli-S3cret-Pa55word";

/// The binary with exactly these environment variables (plus PATH and the harness's).
pub(crate) fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    cmd.args(args).env_clear();
    for keep in [
        "PATH",
        "HOME",
        "PGWARDEN_PG_BIN",
        "TMPDIR",
        "PGWARDEN_TEST_MAX_SERVERS",
    ] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs the binary to its end.
pub(crate) fn pgwarden(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run pgwarden")
}

/// stdout and stderr together.
pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A database of its own on the process's shared server, and a superuser URL to it.
pub(crate) fn own_database() -> (std::sync::Arc<PgServer>, String, String) {
    let server = PgServer::shared().expect("shared server");
    let db = server.create_database(None).expect("database");
    let url = server.url(&db);
    (server, db, url)
}

/// Tables of a bench run left in `db`.
pub(crate) fn bench_tables(server: &PgServer, db: &str) -> String {
    server
        .psql(
            db,
            "SELECT string_agg(tablename, ',') FROM pg_tables WHERE tablename LIKE 'pgwarden_bench%'",
        )
        .expect("list tables")
}

/// A running binary whose stdout is read line by line.
pub(crate) struct Running {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Running {
    pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command(args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pgwarden");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line starting with `prefix`.
    pub(crate) fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} in {within:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits (bounded) for the exit; returns the code and everything printed.
    pub(crate) fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let until = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!(
                    "pgwarden did not exit within {within:?}:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The readers end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.join("\n"))
    }
}
