//! The seal key's home: one Secret in the operator's namespace, created on first start.
//!
//! API calls: `get` on that one Secret by name, and `create` when it does not exist. Several
//! replicas starting at once race on the create; exactly one wins and the others read its key.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::api::MANAGER;
use crate::core::credential::os_rng;
use crate::core::seal::{BadKey, KEY_DATA_KEY, SealKey};

/// What can go wrong loading the key. Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading seal key Secret {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating seal key Secret {namespace}/{name}: {source}")]
    Create {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("seal key Secret {namespace}/{name} exists, yet reading it finds nothing")]
    Vanished { namespace: String, name: String },
    #[error(
        "seal key Secret {namespace}/{name} is unusable ({source}); restore it from backup, or delete it to start a new key"
    )]
    Unusable {
        namespace: String,
        name: String,
        source: BadKey,
    },
}

/// The key in Secret `namespace/name`, creating the Secret with a fresh key if there is none.
pub async fn load_or_create(client: Client, namespace: &str, name: &str) -> Result<SealKey, Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..2 {
        let existing = api.get_opt(name).await.map_err(|source| Error::Read {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
        if let Some(secret) = existing {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(KEY_DATA_KEY))
                .map_or(&[][..], |b| b.0.as_slice());
            let key = SealKey::from_bytes(bytes).map_err(|source| Error::Unusable {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })?;
            tracing::info!(%namespace, %name, key_id = key.id(), "seal key loaded");
            return Ok(key);
        }
        let key = SealKey::generate(&mut os_rng());
        let secret = key_secret(namespace, name, &key);
        let params = PostParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PostParams::default()
        };
        match api.create(&params, &secret).await {
            Ok(_) => {
                tracing::info!(%namespace, %name, key_id = key.id(), "seal key created");
                return Ok(key);
            }
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(source) => {
                return Err(Error::Create {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source,
                });
            }
        }
    }
    Err(Error::Vanished {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The key Secret. It does not carry `app.kubernetes.io/managed-by: tokenmint`, so it stays out of the
/// operator's watch of token Secrets.
fn key_secret(namespace: &str, name: &str, key: &SealKey) -> Secret {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "tokenmint".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "seal-key".to_owned(),
        ),
    ]);
    let annotations = BTreeMap::from([(
        "tokenmint.dev/note".to_owned(),
        "Seals every ApiToken Secret. Back it up with the cluster's Secrets; if it is lost, tokenmint \
         creates a new key and re-seals each Secret whose credential still matches its ApiToken's status."
            .to_owned(),
    )]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KEY_DATA_KEY.to_owned(),
            ByteString(key.bytes().to_vec()),
        )])),
        immutable: Some(true),
        ..Secret::default()
    }
}
