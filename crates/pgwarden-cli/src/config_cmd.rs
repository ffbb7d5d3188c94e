//! `pgwarden config`: the effective configuration as a table (variable, value, source),
//! passwords redacted; `--json` for machines.

use clap::Args;
use pgwarden::config::Config;
use serde_json::json;

use crate::fail::Failure;

#[derive(Args)]
pub(crate) struct ConfigArgs {
    /// Print JSON: {"profile", "settings": [{"variable", "value", "source"}]}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(config: &Config, args: &ConfigArgs) -> Result<(), Failure> {
    let settings = config.effective();
    if args.json {
        let rows: Vec<_> = settings
            .iter()
            .map(|s| json!({"variable": s.variable, "value": s.value, "source": s.source.to_string()}))
            .collect();
        let doc = json!({"profile": config.profile.to_string(), "settings": rows});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<[String; 3]> = settings
        .iter()
        .map(|s| [s.variable.to_owned(), s.value.clone(), s.source.to_string()])
        .collect();
    let header = ["VARIABLE", "VALUE", "SOURCE"].map(str::to_owned);
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    println!("{:<w0$}  {:<w1$}  {}", header[0], header[1], header[2]);
    for [var, value, source] in &rows {
        println!("{var:<w0$}  {value:<w1$}  {source}");
    }
    if config.database_url.is_none() {
        println!();
        println!("DATABASE_URL is unset: `pgwarden bench` and `pgwarden check` use a throwaway local server; the library requires it.");
    }
    Ok(())
}
