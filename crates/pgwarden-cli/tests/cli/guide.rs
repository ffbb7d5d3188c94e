//! Every `$ pgwarden …` command of docs/GUIDE.md, run as written: the variables on its line
//! (`DATABASE_URL` pointing at a throwaway server unless the line sets it), the exit code its
//! `# exits with N` comment states (0 without one), and the output shown under it, in order —
//! numbers may differ, runs of spaces are one, and `…` skips lines.

use crate::common::{own_database, pgwarden, text};

const GUIDE: &str = include_str!("../../../../docs/GUIDE.md");

/// One command of the guide and what it must print.
#[derive(Debug)]
struct Command {
    line: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    exit: i32,
    expected: Vec<String>,
}

/// Splits a shell line into words: whitespace separates, single or double quotes group.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quote, mut any) = (String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {line:?}");
    if any {
        out.push(cur);
    }
    out
}

fn parse(line: &str) -> Command {
    let (cmd, exit) = match line.split_once("# exits with ") {
        Some((c, n)) => (c, n.trim().parse().expect("an exit code")),
        None => (line, 0),
    };
    let mut env = Vec::new();
    let mut ws = words(cmd).into_iter();
    let program = loop {
        let w = ws.next().expect("a program");
        match w.split_once('=') {
            Some((k, v)) if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                env.push((k.to_owned(), v.to_owned()));
            }
            _ => break w,
        }
    };
    assert_eq!(
        program, "pgwarden",
        "the guide runs a command no test runs: {line}"
    );
    Command {
        line: line.to_owned(),
        env,
        args: ws.collect(),
        exit,
        expected: Vec::new(),
    }
}

/// Every command of every ```` ```console ```` block, with the lines shown under it; and no
/// `$ ` line anywhere else.
fn commands() -> Vec<Command> {
    let mut out: Vec<Command> = Vec::new();
    let mut fence: Option<String> = None;
    for l in GUIDE.lines() {
        if let Some(rest) = l.strip_prefix("```") {
            fence = match fence {
                None => Some(rest.trim().to_owned()),
                Some(_) => None,
            };
            continue;
        }
        match fence.as_deref() {
            Some("console") => match l.strip_prefix("$ ") {
                Some(cmd) => out.push(parse(cmd)),
                None => out
                    .last_mut()
                    .expect("a console block starts with a command")
                    .expected
                    .push(l.to_owned()),
            },
            Some(lang) => assert!(
                !l.starts_with("$ "),
                "a command in a ```{lang} block, which no test runs: {l}"
            ),
            None => {}
        }
    }
    out
}

/// A line with every number as `#` and every run of whitespace as one space.
fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|n| n.is_ascii_digit() || *n == '.' || *n == ',')
            {
                chars.next();
            }
            out.push('#');
        } else if c.is_whitespace() {
            while chars.peek().is_some_and(|n| n.is_whitespace()) {
                chars.next();
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn every_pgwarden_command_in_the_guide_runs_with_the_exit_code_and_output_shown() {
    let cmds = commands();
    assert!(cmds.len() >= 5, "{} commands in the guide", cmds.len());
    let (_server, _db, url) = own_database();
    for c in &cmds {
        let mut env: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !env.iter().any(|(k, _)| *k == "DATABASE_URL") {
            env.push(("DATABASE_URL", &url));
        }
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let o = pgwarden(&args, &env);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(c.exit), "$ {}\n{out}", c.line);
        let real: Vec<String> = out.lines().map(normalize).collect();
        let mut at = 0;
        for want in c.expected.iter().filter(|l| l.trim() != "…") {
            let want = normalize(want);
            match real[at..].iter().position(|r| *r == want) {
                Some(i) => at += i + 1,
                None => panic!(
                    "$ {}\nthe guide shows {want:?}, not printed (in this order) in:\n{out}",
                    c.line
                ),
            }
        }
    }
}
