//! `kubectl-apitoken`, the kubectl plugin: `kubectl apitoken list|create|rotate|revoke|reveal|decode`.
//!
//! Exit codes: 0 success, 1 any failure (message on stderr as `error: ...`), 2 a command line clap
//! could not parse. Credentials are printed only by `reveal` and `decode`, and only to stdout.

mod cluster;
mod create;
mod decode;
mod display;
mod error;
mod list;
mod reveal;
mod revoke;
mod rotate;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cluster::ConnectArgs;
use crate::error::Error;

#[derive(Parser)]
#[command(
    name = "kubectl-apitoken",
    bin_name = "kubectl apitoken",
    version,
    about = "Manage tokenmint ApiTokens: list, create, rotate, revoke, reveal and decode API tokens"
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List ApiTokens as a table (or -o wide|json|yaml).
    List(list::ListArgs),
    /// Create or update an ApiToken (server-side apply), or print its manifest with -o yaml.
    Create(create::CreateArgs),
    /// Rotate a token's credential in place (Tinybird's "refresh").
    Rotate(rotate::RotateArgs),
    /// Revoke a token: its Secret is deleted and the ApiToken stays as the record. Final.
    Revoke(revoke::RevokeArgs),
    /// Print a token's credential from its Secret.
    Reveal(reveal::RevealArgs),
    /// Turn a Basic or Bearer token into username and password. Needs no cluster.
    Decode(decode::DecodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Error::Io(format!("starting the async runtime: {e}"))),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(err: &Error) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Result<(), Error> {
    match &cli.command {
        Command::Decode(args) => decode::run(args),
        Command::Create(args) => create::run(args, &cli.connect).await,
        Command::List(args) => list::run(&cluster::connect(&cli.connect).await?, args).await,
        Command::Rotate(args) => rotate::run(&cluster::connect(&cli.connect).await?, args).await,
        Command::Revoke(args) => revoke::run(&cluster::connect(&cli.connect).await?, args).await,
        Command::Reveal(args) => reveal::run(&cluster::connect(&cli.connect).await?, args).await,
    }
}

/// `60s`, `2m`, `1m30s`: a positive duration for `--timeout`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 60s, 2m or 1m30s"))?;
    Duration::try_from(duration)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} must be a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_parse_like_kubectl_durations() {
        assert_eq!(parse_timeout("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("-5s").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn connection_flags_work_before_and_after_the_subcommand() {
        let before = Cli::try_parse_from(["kubectl-apitoken", "-n", "ns1", "list", "-A"]).unwrap();
        assert_eq!(before.connect.namespace.as_deref(), Some("ns1"));
        let after = Cli::try_parse_from([
            "kubectl-apitoken",
            "reveal",
            "t",
            "--form",
            "userpass",
            "--context",
            "c",
            "--kubeconfig",
            "/k",
            "--namespace",
            "ns2",
        ])
        .unwrap();
        assert_eq!(after.connect.namespace.as_deref(), Some("ns2"));
        assert_eq!(after.connect.context.as_deref(), Some("c"));
        assert!(
            matches!(after.command, Command::Reveal(ref r) if r.form == reveal::Form::Userpass)
        );
    }

    fn list_args(args: &[&str]) -> list::ListArgs {
        let mut argv = vec!["kubectl-apitoken", "list"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::List(list) => list,
            _ => unreachable!("parsed a list command"),
        }
    }

    #[test]
    fn list_takes_a_label_selector_as_l_or_selector_with_a_and_o() {
        assert_eq!(list_args(&[]).selector, None);
        let short = list_args(&["-l", "team=analytics,tier!=dev", "-A", "-o", "json"]);
        assert_eq!(short.selector.as_deref(), Some("team=analytics,tier!=dev"));
        assert!(short.all_namespaces);
        assert_eq!(short.output, Some(list::ListOutput::Json));
        let long = list_args(&["--selector", "team in (analytics, ops)", "-o", "wide"]);
        assert_eq!(long.selector.as_deref(), Some("team in (analytics, ops)"));
        assert!(!long.all_namespaces);
        assert_eq!(
            list_args(&["--selector=team"]).selector.as_deref(),
            Some("team")
        );
        // kubectl's -l takes exactly one value.
        assert!(Cli::try_parse_from(["kubectl-apitoken", "list", "-l"]).is_err());
    }
}
