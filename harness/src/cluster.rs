//! The API server side: kubeconfigs, the admin client, CRDs, namespaces and ServiceAccount tokens.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedContext};
use kube::{Api, Client, Config};
use serde::Deserialize;

use crate::{Error, Result};

/// Reads a kubeconfig file.
pub fn read_kubeconfig(path: &Path) -> Result<Kubeconfig> {
    Kubeconfig::read_from(path).map_err(|source| Error::ReadKubeconfig {
        path: path.to_owned(),
        source,
    })
}

/// Client configuration from a kubeconfig file (its current context).
pub async fn load_config(path: &Path) -> Result<Config> {
    let kubeconfig = read_kubeconfig(path)?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::LoadKubeconfig {
            path: path.to_owned(),
            source,
        })
}

/// A client for `config` that has been proven to reach the API server (within 10 s).
pub async fn reachable_client(config: Config) -> Result<Client> {
    let client = Client::try_from(config)?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(Error::Unreachable(e)),
        Err(_) => Err(Error::NoAnswer),
    }
}

/// Server-side applies each CRD in `yamls` (one or more documents each) as `manager` and waits
/// until every one is established. The YAML comes from the caller (`tokenmint::all_crds_yaml()`),
/// so this crate needs no dependency on the operator.
pub async fn install_crds(client: &Client, manager: &str, yamls: &[String]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for yaml in yamls {
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(document).map_err(Error::CrdYaml)?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value).map_err(Error::CrdYaml)?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(|source| Error::InstallCrd {
                name: name.clone(),
                source,
            })?;
            names.push(name);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in names {
        loop {
            let established = api.get(&name).await?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::CrdNotEstablished(name));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Creates namespace `name` labelled `label: "true"` (how the bench and the tests find their own).
pub async fn create_namespace(client: &Client, name: &str, label: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(label.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|source| Error::Namespace {
            name: name.to_owned(),
            source,
        })?;
    Ok(())
}

/// Starts deleting namespace `name` (in the background); `false` if it was already gone.
pub async fn delete_namespace(client: &Client, name: &str) -> Result<bool> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::Namespace {
            name: name.to_owned(),
            source,
        }),
    }
}

/// Waits until namespace `name` is gone (everything in it deleted), polling every 500 ms.
pub async fn wait_namespace_gone(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            return Err(Error::NamespaceNotGone {
                name: name.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// A bearer token (TokenRequest API) valid for `lifetime` for ServiceAccount `account` in
/// `namespace`, creating the ServiceAccount first if it does not exist. An existing one is left as
/// it is (a chart may own it).
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    account: &str,
    lifetime: Duration,
) -> Result<String> {
    let failed = |source| Error::ServiceAccount {
        account: format!("{namespace}/{account}"),
        source,
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if accounts.get_opt(account).await.map_err(failed)?.is_none() {
        let new = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(account.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &new).await {
            Ok(_) => {}
            // Created meanwhile by someone else: just as good.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(failed(e)),
        }
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(lifetime.as_secs() as i64),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(failed)?
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::NoToken(format!("{namespace}/{account}")))
}

/// Writes at `path` a kubeconfig with the admin kubeconfig's cluster (server and CA) and a user
/// `user` authenticated only by `token`. The file holds a credential: owner-only, like the admin's.
pub fn write_token_kubeconfig(
    admin: &Kubeconfig,
    user: &str,
    token: &str,
    path: &Path,
) -> Result<()> {
    let kubeconfig = token_kubeconfig(admin, user, token)?;
    let yaml = serde_yaml::to_string(&kubeconfig)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(write)?;
    std::io::Write::write_all(&mut file, yaml.as_bytes()).map_err(write)
}

fn token_kubeconfig(admin: &Kubeconfig, user: &str, token: &str) -> Result<Kubeconfig> {
    let context = admin
        .current_context
        .as_deref()
        .and_then(|name| admin.contexts.iter().find(|c| c.name == name))
        .or(admin.contexts.first())
        .and_then(|c| c.context.clone())
        .ok_or(Error::KubeconfigShape("has no context"))?;
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .cloned()
        .ok_or(Error::KubeconfigShape("names a missing cluster"))?;
    Ok(Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        auth_infos: vec![NamedAuthInfo {
            name: user.to_owned(),
            auth_info: Some(AuthInfo {
                token: Some(token.to_owned().into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: user.to_owned(),
            context: Some(Context {
                cluster: cluster.name.clone(),
                user: Some(user.to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(user.to_owned()),
        clusters: vec![cluster],
        ..Kubeconfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: 'https://127.0.0.1:1'}
- name: local
  cluster: {server: 'https://127.0.0.1:6443', certificate-authority-data: Q0E=}
users:
- name: admin
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
contexts:
- name: admin
  context: {cluster: local, user: admin}
current-context: admin
";

    #[test]
    fn token_kubeconfig_keeps_the_current_cluster_and_only_the_token() {
        let admin: Kubeconfig = serde_yaml::from_str(ADMIN).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.kubeconfig");
        write_token_kubeconfig(&admin, "sa", "secret-token", &path).unwrap();

        let written = read_kubeconfig(&path).unwrap();
        assert_eq!(written.current_context.as_deref(), Some("sa"));
        assert_eq!(written.clusters.len(), 1);
        let cluster = written.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("secret-token"));
        assert!(!text.contains("Q0VSVA=="), "no admin certificate: {text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn token_kubeconfig_needs_a_context() {
        let admin = Kubeconfig::default();
        assert!(matches!(
            token_kubeconfig(&admin, "sa", "t"),
            Err(Error::KubeconfigShape(_))
        ));
    }
}
