//! Logging setup: human-readable text or one JSON object per line.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The client library logs the whole response body when a response does not decode (an ApiToken list
/// with access keys, a Secret list with credentials). That module's output is limited to errors
/// unless `RUST_LOG` names it explicitly.
const QUIET_CLIENT: &str = "kube_client::client=error";

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let directives = if directives.contains("kube_client") {
        directives
    } else {
        format!("{directives},{QUIET_CLIENT}")
    };
    let filter = EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET_CLIENT}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
