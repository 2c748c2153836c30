//! Writes: the output Secrets whose bytes changed, and the verifier's status.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::MANAGER;
use crate::api::verifier::{
    ApiTokenVerifier, ApiTokenVerifierStatus, OUTPUT_SECRET_TYPE, VERIFIER_LABEL,
};
use crate::controller::verifier::error::Error;
use crate::core::token::secret::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::runtime::cache::SecretCache;

pub(super) fn controlled_by(secret: &Secret, uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Creates the output Secret `name` with `data` (key, bytes) (POST, which fails if a Secret of that
/// name appeared meanwhile) or applies its new data pinned to the observed resourceVersion; returns
/// it as written.
pub(super) async fn write_output(
    client: &Client,
    secrets: &SecretCache,
    verifier: &ApiTokenVerifier,
    existing: Option<&Secret>,
    name: &str,
    data: &[(&str, &[u8])],
) -> Result<Secret, Error> {
    let ns = verifier.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (VERIFIER_LABEL.to_owned(), verifier.name_any()),
            ])),
            owner_references: verifier.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(OUTPUT_SECRET_TYPE.to_owned()),
        data: Some(
            data.iter()
                .map(|(key, bytes)| ((*key).to_owned(), ByteString(bytes.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    };
    let err = |source| Error::WriteOutput {
        name: name.to_owned(),
        source,
    };
    let mut written = match existing {
        None => {
            let params = PostParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&params, &secret).await.map_err(err)?
        }
        Some(_) => api
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(err)?,
    };
    written.metadata.managed_fields = None;
    let key = ObjectRef::new(name).within(&ns);
    let based_on = existing.and_then(|s| s.metadata.resource_version.clone());
    secrets.advance(
        &key,
        based_on.as_deref(),
        watcher::Event::Apply(written.clone()),
    );
    Ok(written)
}
/// Applies `status` unless it equals `last` (a steady state writes nothing).
pub(super) async fn write_status(
    client: &Client,
    verifier: &ApiTokenVerifier,
    last: &ApiTokenVerifierStatus,
    status: ApiTokenVerifierStatus,
) -> Result<(), Error> {
    if &status == last {
        return Ok(());
    }
    let ns = verifier.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ApiTokenVerifier> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "apiVersion": ApiTokenVerifier::api_version(&()),
        "kind": ApiTokenVerifier::kind(&()),
        "status": status,
    });
    api.patch_status(
        &verifier.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::WriteStatus)?;
    Ok(())
}
