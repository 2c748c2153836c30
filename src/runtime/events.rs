//! Kubernetes Events, sent off the reconcile's critical path.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

/// Events are recorded after the credential and status writes, off the reconcile's critical path:
/// a reconcile queues its Event and moves on, and a sender with `IN_FLIGHT` requests in
/// flight records them. In a rotation storm the API server's capacity goes to the credentials
/// first (every Event still follows its status write). When more than `BACKLOG` wait,
/// the reconcile records its own, as before, so a bulk cannot grow the queue without bound.
#[derive(Clone)]
pub struct Events {
    queue: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    client: Client,
    reporter: Reporter,
}

impl Events {
    /// Events waiting to be sent, at most (about 0.5 KiB each).
    const BACKLOG: usize = 1024;
    /// Event requests the sender keeps in flight.
    const IN_FLIGHT: usize = 2;

    /// The queue, and the sender that drains it until every handle on the queue is dropped.
    pub fn new(
        client: Client,
        reporter: Reporter,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (queue, mut queued) = tokio::sync::mpsc::channel(Self::BACKLOG);
        let sender = {
            let (client, reporter) = (client.clone(), reporter.clone());
            async move {
                futures::stream::poll_fn(move |cx| queued.poll_recv(cx))
                    .for_each_concurrent(Self::IN_FLIGHT, |(event, reference)| {
                        publish(&client, &reporter, event, reference)
                    })
                    .await;
            }
        };
        (
            Events {
                queue,
                client,
                reporter,
            },
            sender,
        )
    }

    /// Queues `event` about `reference`, or records it now when the queue is full.
    pub async fn record(&self, event: Event, reference: ObjectReference) {
        use tokio::sync::mpsc::error::TrySendError;
        match self.queue.try_send((event, reference)) {
            Ok(()) => {}
            Err(
                TrySendError::Full((event, reference)) | TrySendError::Closed((event, reference)),
            ) => {
                publish(&self.client, &self.reporter, event, reference).await;
            }
        }
    }
}

/// Records one Event. A Recorder per Event: a shared one keeps every Event it sent for six minutes
/// (about 2.7 KiB per token, 26 MiB after issuing 10,000) only to merge repeats, and Events here
/// are transitions.
async fn publish(client: &Client, reporter: &Reporter, event: Event, reference: ObjectReference) {
    let recorder = Recorder::new(client.clone(), reporter.clone());
    if let Err(e) = recorder.publish(&event, &reference).await {
        // An Event is a courtesy; the state change already happened.
        tracing::warn!(namespace = reference.namespace.as_deref(), name = reference.name.as_deref(),
            reason = %event.reason, error = %e, "could not record Event");
    }
}
