//! The verifier and namespace watches, started before either controller runs.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::verifier::ApiTokenVerifier;
use crate::controller::verifier::lookup::Lookup;
use crate::runtime::coalesce::Window;
use crate::runtime::watch::{WatchBackoff, not_gone};

/// How long changes are gathered before the verifiers render again: a storm of rotations is written
/// as a few writes per output, not one per token. A window opened by the first change, not a
/// debounce: a steady stream of changes (a bulk issue, a storm, a busy cluster) must not postpone
/// a revocation for as long as it lasts. 100 ms while renders are light; when the renders of the last
/// change took longer (large outputs, many verifiers) the window grows to four times their duration,
/// at most a second, so that under a steady stream the renders take about a quarter of the time, not
/// all of it. Only the render's own work counts, not the round trips of its writes. A change after a quiet window is rendered at once, whatever the size.
pub const COALESCE: Window = Window {
    least: Duration::from_millis(100),
    most: Duration::from_secs(1),
    times: 4,
};

/// The verifier and namespace watches, started before either controller runs.
pub struct Watches {
    pub lookup: Lookup,
    /// Fires on every verifier or namespace change (tokens then re-evaluate `status.audiences`).
    pub changed: futures::channel::mpsc::UnboundedReceiver<()>,
    verifiers: BoxStream<'static, watcher::Result<ApiTokenVerifier>>,
    namespaces: BoxStream<'static, ()>,
}

/// Starts watching ApiTokenVerifiers (in `namespace`, or all) and, when watching all namespaces,
/// Namespaces' labels (metadata only). With `--namespace` the operator may read no Namespace: trust
/// selectors then match nothing, and only a trust entry without one (the verifier's own namespace,
/// the one watched) trusts.
pub fn watch(client: &Client, namespace: Option<&str>) -> Watches {
    let api: Api<ApiTokenVerifier> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let (changed_tx, changed) = futures::channel::mpsc::unbounded::<()>();
    let on_verifier = changed_tx.clone();
    let verifiers = watcher(api, watcher::Config::default())
        .filter(not_gone)
        .backoff(WatchBackoff::default())
        .modify(|v: &mut ApiTokenVerifier| v.metadata.managed_fields = None)
        .reflect(writer)
        .inspect_ok(move |_| {
            let _ = on_verifier.unbounded_send(());
        })
        .applied_objects()
        .boxed();
    let (namespace_store, namespaces) = match namespace {
        Some(_) => (None, futures::stream::pending().boxed()),
        None => {
            let (ns_store, ns_writer) = reflector::store();
            let events = watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            )
            .filter(not_gone)
            .backoff(WatchBackoff::default())
            .reflect(ns_writer)
            .filter_map(move |event| {
                let _ = changed_tx.unbounded_send(());
                futures::future::ready(event.ok().map(|_| ()))
            })
            .boxed();
            (Some(ns_store), events)
        }
    };
    Watches {
        lookup: Lookup {
            verifiers: store,
            namespaces: namespace_store,
            excluded: Arc::default(),
        },
        changed,
        verifiers,
        namespaces,
    }
}

impl Watches {
    /// The verifier event stream and the namespace event stream, for [`super::run`].
    pub fn streams(
        self,
    ) -> (
        Lookup,
        futures::channel::mpsc::UnboundedReceiver<()>,
        BoxStream<'static, watcher::Result<ApiTokenVerifier>>,
        BoxStream<'static, ()>,
    ) {
        (self.lookup, self.changed, self.verifiers, self.namespaces)
    }
}
