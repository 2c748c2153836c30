//! `tokenmint authz`: a forward-auth check for nginx `auth_request`, Traefik `forwardAuth` and Envoy
//! `ext_authz` (HTTP), serving from one ApiTokenVerifier `sha256-map` output.
//!
//! Pure in the middle: [`map`] reads the output, [`check`] decides one request at a given instant.
//! Around it, [`source`] keeps the output current (a watch on that one Secret, or a mounted file) and
//! [`server`] answers `/verify`, `/healthz`, `/readyz` and `/metrics`. Fails closed: until a valid
//! copy is loaded, and whenever the output is deleted, malformed or (through the API) out of reach for
//! longer than `--max-stale`, every check is refused.

pub mod check;
pub mod map;
pub mod server;
pub mod source;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use map::Credentials;

use crate::api::verifier::VerifierRef;
use crate::runtime::telemetry::LogFormat;

/// Any error, printed once by the binary.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags of `tokenmint authz`.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthzArgs {
    /// The ApiTokenVerifier whose output to serve, as NAMESPACE/NAME; the output Secret must be
    /// controlled by it.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_verifier, required_unless_present = "file")]
    pub verifier: Option<VerifierRef>,
    /// The verifier's sha256-map output Secret (in the verifier's namespace), watched through the API.
    #[arg(
        long,
        value_name = "SECRET",
        requires = "verifier",
        conflicts_with = "file"
    )]
    pub output: Option<String>,
    /// Data key of the map in the Secret (the output's `key`).
    #[arg(long, default_value = crate::api::verifier::DEFAULT_SHA256_MAP_KEY)]
    pub key: String,
    /// Read a mounted copy of the map (e.g. `/etc/tokenmint/tokens.json`) instead, and reload it when
    /// it changes.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Address for /verify, /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// How long authz may go without the API server confirming its output (an error, a refused or a
    /// silent watch) before every check is refused: a revocation might not arrive. Not in --file mode.
    #[arg(long, default_value = "60s", value_parser = crate::core::schedule::parse_seconds)]
    pub max_stale: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Record when each credential was last let in, as usage records (ConfigMaps) in this namespace
    /// (authz's own; the operator folds them into each token's `status.lastUsedAt` when it trusts
    /// the namespace). Needs `--verifier`. Without it nothing is recorded.
    #[arg(long, value_name = "NS", requires = "verifier")]
    pub usage_namespace: Option<String>,
    /// A credential in continuous use is written at most once per this period (at least 1m), so a
    /// last use is up to this old.
    #[arg(long, default_value = "1h", value_parser = parse_granularity)]
    pub usage_granularity: Duration,
    /// How often what was seen is written (the delay before a first use shows).
    #[arg(long, default_value = "30s", value_parser = crate::core::schedule::parse_seconds)]
    pub usage_flush_interval: Duration,
}

fn parse_granularity(text: &str) -> Result<Duration, String> {
    let period = crate::core::schedule::parse_seconds(text)?;
    if period < crate::core::usage::MIN_GRANULARITY {
        return Err("at least 1m".into());
    }
    Ok(period)
}

fn parse_verifier(text: &str) -> Result<VerifierRef, String> {
    let (namespace, name) = text
        .split_once('/')
        .ok_or_else(|| "NAMESPACE/NAME, e.g. data/pinot".to_owned())?;
    if namespace.is_empty() || name.is_empty() {
        return Err("NAMESPACE/NAME, e.g. data/pinot".into());
    }
    Ok(VerifierRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// What authz serves from now.
#[derive(Debug, Clone)]
pub enum Output {
    /// Nothing read yet.
    Waiting,
    /// The Secret or file does not exist.
    Absent,
    /// It exists but cannot be used; why, never its content.
    Invalid(String),
    Loaded(Arc<Credentials>),
}

/// Why checks are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the output has not been read yet")]
    Waiting,
    #[error("the output does not exist")]
    Absent,
    #[error("the output cannot be used: {0}")]
    Invalid(String),
    #[error("the API server has not confirmed the output for {0:?}; a revocation might not arrive")]
    Stale(Duration),
}

/// The output as last read, and whether its source is still reachable; shared by the source and
/// the server.
#[derive(Debug)]
pub struct Shared {
    state: RwLock<State>,
    max_stale: Option<Duration>,
    pub metrics: server::AuthzMetrics,
    /// Uses noted in maps that were replaced, until the usage writer takes them; `None`: uses are
    /// not recorded.
    replaced: Option<usage::Replaced>,
}

#[derive(Debug)]
struct State {
    output: Output,
    /// When the source last proved that what is served is current (a read, an accepted watch, an
    /// event, a bookmark, a watch that ended on time). `--max-stale` counts from here, so every way
    /// updates can stop (an error, a refused watch, a connection that went silent) ends in refusal.
    confirmed_at: Instant,
}

impl Shared {
    /// `max_stale`: how long the source may go without confirming what is served before checks are
    /// refused (`None`: no limit, for a file).
    pub fn new(max_stale: Option<Duration>) -> Shared {
        Shared {
            state: RwLock::new(State {
                output: Output::Waiting,
                confirmed_at: Instant::now(),
            }),
            max_stale,
            metrics: server::AuthzMetrics::new(),
            replaced: None,
        }
    }

    /// Also notes each credential's uses, for [`usage::write`].
    pub fn recording_uses(self) -> Shared {
        Shared {
            replaced: Some(usage::Replaced::default()),
            ..self
        }
    }

    /// Whether uses are noted.
    pub fn records_uses(&self) -> bool {
        self.replaced.is_some()
    }

    /// Replaces what is served, and counts the load. What was just read is current.
    pub fn set(&self, output: Output) {
        let (result, credentials) = match &output {
            Output::Waiting => ("waiting", 0),
            Output::Absent => ("absent", 0),
            Output::Invalid(_) => ("invalid", 0),
            Output::Loaded(c) => ("loaded", c.credentials()),
        };
        match &output {
            Output::Loaded(c) => tracing::info!(
                credentials = c.credentials(),
                skipped = c.skipped(),
                "output loaded"
            ),
            Output::Invalid(why) => {
                tracing::warn!(reason = %why, "output cannot be used; refusing every check")
            }
            Output::Absent => tracing::warn!("output does not exist; refusing every check"),
            Output::Waiting => {}
        }
        self.metrics.loaded(result, credentials);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut state.output, output);
        state.confirmed_at = Instant::now();
        drop(state);
        if let (Some(replaced), Output::Loaded(old)) = (&self.replaced, old) {
            replaced.keep(&old);
        }
    }

    /// How long what is served may go unconfirmed (`None` for a file).
    pub fn max_stale(&self) -> Option<Duration> {
        self.max_stale
    }

    /// The source proved that what is served is still current.
    pub fn confirmed(&self) {
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .confirmed_at = Instant::now();
    }

    /// The map loaded, stale or not: what its uses were noted in.
    fn loaded(&self) -> Option<Arc<Credentials>> {
        match &self.state.read().unwrap_or_else(|e| e.into_inner()).output {
            Output::Loaded(credentials) => Some(credentials.clone()),
            _ => None,
        }
    }

    /// The credentials to check against, or why there are none.
    pub fn serving(&self) -> Result<Arc<Credentials>, NotReady> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(max) = self.max_stale {
            let for_ = state.confirmed_at.elapsed();
            if for_ > max {
                return Err(NotReady::Stale(for_));
            }
        }
        match &state.output {
            Output::Waiting => Err(NotReady::Waiting),
            Output::Absent => Err(NotReady::Absent),
            Output::Invalid(why) => Err(NotReady::Invalid(why.clone())),
            Output::Loaded(credentials) => Ok(credentials.clone()),
        }
    }
}

/// Runs authz until `shutdown` resolves.
pub async fn run(
    args: AuthzArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let source = match (&args.file, &args.output, &args.verifier) {
        (Some(path), _, _) => source::Source::File(path.clone()),
        (None, Some(output), Some(verifier)) => source::Source::Secret {
            client: kube::Client::try_default().await?,
            verifier: verifier.clone(),
            name: output.clone(),
        },
        _ => return Err("give --verifier NS/NAME with --output SECRET, or --file PATH".into()),
    };
    let max_stale = matches!(source, source::Source::Secret { .. }).then_some(args.max_stale);
    let recorder = match (&args.usage_namespace, &args.verifier) {
        (Some(namespace), Some(verifier)) => {
            let client = match &source {
                source::Source::Secret { client, .. } => client.clone(),
                source::Source::File(_) => kube::Client::try_default().await?,
            };
            Some(usage::Settings {
                client,
                namespace: namespace.clone(),
                verifier: verifier.to_string(),
                granularity: args.usage_granularity,
                every: args.usage_flush_interval,
            })
        }
        _ => None,
    };
    let mut shared = Shared::new(max_stale);
    if recorder.is_some() {
        shared = shared.recording_uses();
    }
    let shared = Arc::new(shared);
    tracing::info!(source = %source, key = %args.key, listen = %args.listen,
        usage_namespace = args.usage_namespace.as_deref().unwrap_or("(not recorded)"),
        "tokenmint authz starting");
    let follow = tokio::spawn(source.follow(args.key.clone(), shared.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer =
        recorder.map(|settings| tokio::spawn(usage::write(settings, shared.clone(), stopped)));
    let served = server::serve(args.listen, shared, shutdown).await;
    follow.abort();
    if let Some(writer) = writer {
        // What was seen since the last write, written once more before the process goes.
        stop.send_replace(true);
        if tokio::time::timeout(usage::LAST_WRITE, writer)
            .await
            .is_err()
        {
            tracing::warn!("the last usage write did not finish in time");
        }
    }
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded() -> Output {
        Output::Loaded(Arc::new(
            map::parse(b"{\"tokens\":{},\"version\":1}").unwrap(),
        ))
    }

    #[test]
    fn nothing_is_served_until_a_valid_copy_is_loaded_nor_after_it_goes() {
        let shared = Shared::new(None);
        assert_eq!(shared.serving().unwrap_err(), NotReady::Waiting);
        shared.set(Output::Absent);
        assert_eq!(shared.serving().unwrap_err(), NotReady::Absent);
        shared.set(loaded());
        assert!(shared.serving().is_ok());
        shared.set(Output::Invalid("bad".into()));
        assert_eq!(
            shared.serving().unwrap_err(),
            NotReady::Invalid("bad".into())
        );
        shared.set(loaded());
        shared.set(Output::Absent);
        assert_eq!(shared.serving().unwrap_err(), NotReady::Absent);
    }

    #[test]
    fn an_unconfirmed_output_is_refused_after_max_stale() {
        let shared = Shared::new(Some(Duration::from_millis(20)));
        shared.set(loaded());
        assert!(shared.serving().is_ok(), "within max-stale");
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(shared.serving(), Err(NotReady::Stale(_))));
        shared.confirmed();
        assert!(shared.serving().is_ok());
        let unlimited = Shared::new(None);
        unlimited.set(loaded());
        std::thread::sleep(Duration::from_millis(30));
        assert!(unlimited.serving().is_ok(), "a file has no max-stale");
    }
}
