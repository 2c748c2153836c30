//! Reaching the cluster the way kubectl does, and the few reads every command shares.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokenmint::api::ApiToken;

use crate::error::{APITOKENS, Error, Op, SECRETS};

/// Field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-apitoken";

/// How long to wait for a TCP connection before calling the cluster unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// kubectl's connection flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConnectArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH", help_heading = "Connection")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME", help_heading = "Connection")]
    pub context: Option<String>,
    /// Namespace of the ApiToken (default: the context's namespace, else `default`).
    #[arg(
        short = 'n',
        long,
        global = true,
        value_name = "NS",
        help_heading = "Connection"
    )]
    pub namespace: Option<String>,
}

/// A client for the chosen cluster and the namespace commands act in.
pub struct Target {
    pub client: Client,
    pub namespace: String,
    /// The API server URL, for messages.
    pub url: String,
}

/// Loads the kubeconfig like kubectl (`--kubeconfig`, else every file in `KUBECONFIG` merged, else
/// `~/.kube/config`), picks the context, and builds a client. Does not contact the cluster.
pub async fn connect(args: &ConnectArgs) -> Result<Target, Error> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?,
        None => Kubeconfig::read().map_err(|e| {
            Error::Kubeconfig(format!(
                "{e} (set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config)"
            ))
        })?,
    };
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(Target {
        client,
        namespace,
        url,
    })
}

impl Target {
    /// ApiTokens in the target namespace.
    pub fn tokens(&self) -> Api<ApiToken> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// JSON merge patch of the named ApiToken under the plugin's field manager.
    pub async fn merge_patch_token(
        &self,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<(), Error> {
        let params = kube::api::PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        self.tokens()
            .patch(name, &params, &kube::api::Patch::Merge(patch))
            .await
            .map(drop)
            .map_err(|e| self.token_op("patch", name).error(e))
    }

    /// Describes a call on the named ApiToken, for error messages.
    pub fn token_op<'a>(&'a self, verb: &'static str, name: &'a str) -> Op<'a> {
        Op {
            verb,
            resource: APITOKENS,
            name: Some(name),
            namespace: Some(&self.namespace),
            url: &self.url,
        }
    }

    /// The named ApiToken; a missing one is [`Error::NotFound`].
    pub async fn get_token(&self, name: &str) -> Result<ApiToken, Error> {
        self.tokens()
            .get(name)
            .await
            .map_err(|e| self.token_op("get", name).error(e))
    }

    /// The named Secret in the target namespace, or `None`.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        let op = Op {
            verb: "get",
            resource: SECRETS,
            name: Some(name),
            namespace: Some(&self.namespace),
            url: &self.url,
        };
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .map_err(|e| op.error(e))
    }

    /// `namespace/name`, for messages.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}/{name}", self.namespace)
    }
}

/// Polls the named ApiToken every 250 ms until `done` returns `Some`, or fails after `timeout`
/// with `what` and the token's Ready message (which says why the operator is stuck, if it is).
pub async fn wait_for_token<T>(
    target: &Target,
    name: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&ApiToken) -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let token = target.get_token(name).await?;
        if let Some(value) = done(&token)? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            let ready = ready_message(&token)
                .map(|m| format!(" (Ready: {m})"))
                .unwrap_or_default();
            return Err(Error::Timeout(format!(
                "timed out after {} waiting for {what} of apitoken {}{ready}; is the tokenmint operator running?",
                jiff::SignedDuration::try_from(timeout)
                    .map(|d| format!("{d:#}"))
                    .unwrap_or_else(|_| format!("{timeout:?}")),
                target.qualified(name),
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `reason: message` of the token's Ready condition, if any.
pub fn ready_message(token: &ApiToken) -> Option<String> {
    let ready = token
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some(format!(
        "{} {}: {}",
        ready.status, ready.reason, ready.message
    ))
}
