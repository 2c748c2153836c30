//! Consumers: workloads that read a token's credential only when they start, restarted once per
//! promoted credential. Pure: what a workload's rollout says, and what to do for one consumer.
//!
//! The record of a restart is a pod-template annotation, `credential.tokenmint.dev/<token>: <the
//! credential's fingerprint>`: setting it rolls the workload out, and setting it again to the same
//! value changes nothing, so a restart of the operator, a resync or a second reconcile never
//! restarts a workload twice for one credential. No timestamp is written, so nothing else differs.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};

use crate::api::{Consumer, ConsumerKind, ConsumerStatus};

/// The annotations' prefix (a DNS subdomain; the token's name, at most 63 characters, follows).
pub const ANNOTATION_PREFIX: &str = "credential.tokenmint.dev/";

/// The field manager of tokenmint's writes to workloads.
pub const FIELD_MANAGER: &str = "tokenmint";

/// The pod-template annotation that records token `token`'s credential in a workload.
pub fn annotation_key(token: &str) -> String {
    format!("{ANNOTATION_PREFIX}{token}")
}

/// Where a workload's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every replica runs the current pod template and is available.
    Complete,
    /// Replicas are being replaced.
    InProgress,
    /// It does not progress; why.
    Stuck(String),
}

/// What tokenmint knows of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Present(Workload),
    NotFound,
    /// tokenmint may not read or patch it; the verb refused.
    Forbidden(String),
}

/// The parts of a workload a consumer decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The value of the token's annotation on its pod template.
    pub annotation: Option<String>,
    /// Another field manager that owns the token's annotation, if any.
    pub foreign_owner: Option<String>,
    pub progress: Progress,
}

/// The consumer states, as written in `status.consumers[].state`.
pub mod state {
    pub const CURRENT: &str = "Current";
    pub const PENDING: &str = "Pending";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const STUCK: &str = "Stuck";
    pub const NOT_FOUND: &str = "NotFound";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const CONFLICT: &str = "Conflict";
}

/// What to do for one consumer, and what its status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Set the annotation to the current fingerprint (a restart).
    pub restart: bool,
    pub status: ConsumerStatus,
}

/// Decides for `consumer` of token `token`, whose current credential is `fingerprint`, given what is
/// known of the workload and what status said last.
///
/// A workload named before it carries the annotation is taken to run the current credential (it
/// read the Secret when it started, and nothing rotated since it was named): it is recorded, not
/// restarted. A later credential restarts it, once.
pub fn decide(
    consumer: &Consumer,
    token: &str,
    fingerprint: &str,
    observed: &Observed,
    last: Option<&ConsumerStatus>,
    restarting: bool,
) -> Decision {
    let entry = |state: &str, fp: Option<&str>, message: Option<String>| ConsumerStatus {
        kind: consumer.kind,
        name: consumer.name.clone(),
        state: state.to_owned(),
        fingerprint: fp.map(str::to_owned),
        restarted_at: last.and_then(|l| l.restarted_at.clone()),
        message,
    };
    let last_fp = last.and_then(|l| l.fingerprint.as_deref());
    let keep = |restart: bool, status: ConsumerStatus| Decision { restart, status };
    let workload = match observed {
        Observed::NotFound => {
            let why = format!(
                "{} {} not found in the token's namespace",
                consumer.kind.as_str(),
                consumer.name
            );
            return keep(false, entry(state::NOT_FOUND, last_fp, Some(why)));
        }
        Observed::Forbidden(verb) => {
            let why = format!(
                "tokenmint may not {verb} {}s: install the chart with consumers.enabled=true",
                consumer.kind.as_str().to_lowercase()
            );
            return keep(false, entry(state::FORBIDDEN, last_fp, Some(why)));
        }
        Observed::Present(workload) => workload,
    };
    if let Some(owner) = &workload.foreign_owner {
        let why = format!(
            "spec.template.metadata.annotations[{}] is owned by field manager {owner}; tokenmint leaves it alone",
            annotation_key(token)
        );
        return keep(false, entry(state::CONFLICT, last_fp, Some(why)));
    }
    let runs_current = match workload.annotation.as_deref() {
        Some(recorded) => recorded == fingerprint,
        // Never restarted by tokenmint: current if adopted at this credential, or just named.
        None => last_fp.is_none_or(|fp| fp == fingerprint),
    };
    if !runs_current {
        let why = "a restart for the current credential is queued".to_owned();
        return keep(true, entry(state::PENDING, last_fp, Some(why)));
    }
    if restarting {
        let why = "a restart for the current credential is queued".to_owned();
        return keep(false, entry(state::PENDING, last_fp, Some(why)));
    }
    let (state, message) = match &workload.progress {
        Progress::Complete => (state::CURRENT, None),
        Progress::InProgress => (
            state::ROLLING_OUT,
            Some("replicas are being replaced".to_owned()),
        ),
        Progress::Stuck(why) => (state::STUCK, Some(why.clone())),
    };
    keep(false, entry(state, Some(fingerprint), message))
}

/// Whether a consumer of a token with this status has not yet moved to its current credential:
/// a restart queued, rolling out, or stuck.
pub fn moving(consumers: &[ConsumerStatus]) -> bool {
    consumers
        .iter()
        .any(|c| [state::PENDING, state::ROLLING_OUT, state::STUCK].contains(&c.state.as_str()))
}

/// The entry after tokenmint restarted the workload at `at`.
pub fn restarted(mut status: ConsumerStatus, fingerprint: &str, at: Time) -> ConsumerStatus {
    status.state = state::ROLLING_OUT.to_owned();
    status.fingerprint = Some(fingerprint.to_owned());
    status.restarted_at = Some(at);
    status.message = Some("replicas are being replaced".to_owned());
    status
}

/// Another field manager than tokenmint's that owns `key` in the pod template's annotations.
pub fn foreign_owner(managed: Option<&[ManagedFieldsEntry]>, key: &str) -> Option<String> {
    let field = format!("f:{key}");
    managed?.iter().find_map(|entry| {
        let owns = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.pointer("/f:spec/f:template/f:metadata/f:annotations"))
            .and_then(|a| a.get(&field))
            .is_some();
        let manager = entry.manager.as_deref().unwrap_or_default();
        (owns && manager != FIELD_MANAGER).then(|| manager.to_owned())
    })
}

fn replicas_done(
    generation_seen: bool,
    wanted: i32,
    updated: i32,
    total: i32,
    available: i32,
) -> bool {
    generation_seen && updated >= wanted && total == wanted && available >= wanted
}

/// A Deployment's rollout: `ProgressDeadlineExceeded` is stuck.
pub fn deployment_progress(d: &Deployment) -> Progress {
    let status = d.status.clone().unwrap_or_default();
    let stuck = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = stuck {
        return Progress::Stuck(format!(
            "the Deployment's rollout exceeded its progress deadline: {}",
            c.message.as_deref().unwrap_or("no message")
        ));
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let seen = status.observed_generation >= d.metadata.generation;
    let done = replicas_done(
        seen,
        wanted,
        status.updated_replicas.unwrap_or(0),
        status.replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    );
    if done {
        Progress::Complete
    } else {
        Progress::InProgress
    }
}

/// A StatefulSet's rollout. One with `updateStrategy: OnDelete` never replaces a pod by itself.
pub fn stateful_set_progress(s: &StatefulSet) -> Progress {
    let spec = s.spec.clone().unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    let on_delete = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    let wanted = spec.replicas.unwrap_or(1);
    let seen = status.observed_generation >= s.metadata.generation;
    let revised =
        status.current_revision.is_some() && status.current_revision == status.update_revision;
    let done = revised
        && replicas_done(
            seen,
            wanted,
            status.updated_replicas.unwrap_or(0),
            status.replicas,
            status.available_replicas.unwrap_or(0),
        );
    match (done, on_delete) {
        (true, _) => Progress::Complete,
        (false, true) => Progress::Stuck(
            "the StatefulSet's updateStrategy is OnDelete: its pods restart only when deleted"
                .into(),
        ),
        (false, false) => Progress::InProgress,
    }
}

/// A DaemonSet's rollout.
pub fn daemon_set_progress(d: &DaemonSet) -> Progress {
    let status = d.status.clone().unwrap_or_default();
    let seen = status.observed_generation >= d.metadata.generation;
    let wanted = status.desired_number_scheduled;
    let done = replicas_done(
        seen,
        wanted,
        status.updated_number_scheduled.unwrap_or(0),
        status.current_number_scheduled,
        status.number_available.unwrap_or(0),
    ) && status.number_unavailable.unwrap_or(0) == 0;
    if done {
        Progress::Complete
    } else {
        Progress::InProgress
    }
}

/// The kinds' API names, for messages and RBAC.
pub fn plural(kind: ConsumerKind) -> &'static str {
    match kind {
        ConsumerKind::Deployment => "deployments",
        ConsumerKind::StatefulSet => "statefulsets",
        ConsumerKind::DaemonSet => "daemonsets",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consumer() -> Consumer {
        Consumer {
            kind: ConsumerKind::Deployment,
            name: "app".into(),
        }
    }

    fn present(annotation: Option<&str>, progress: Progress) -> Observed {
        Observed::Present(Workload {
            annotation: annotation.map(str::to_owned),
            foreign_owner: None,
            progress,
        })
    }

    fn last(state: &str, fp: Option<&str>) -> ConsumerStatus {
        ConsumerStatus {
            kind: ConsumerKind::Deployment,
            name: "app".into(),
            state: state.into(),
            fingerprint: fp.map(str::to_owned),
            restarted_at: None,
            message: None,
        }
    }

    #[test]
    fn a_workload_named_before_any_rotation_is_adopted_not_restarted() {
        let d = decide(
            &consumer(),
            "t",
            "sha256:new",
            &present(None, Progress::Complete),
            None,
            false,
        );
        assert!(!d.restart);
        assert_eq!(d.status.state, state::CURRENT);
        assert_eq!(d.status.fingerprint.as_deref(), Some("sha256:new"));
    }

    #[test]
    fn a_new_credential_restarts_once_and_never_again_for_it() {
        // Adopted at the old credential, then a rotation: restart.
        let adopted = last(state::CURRENT, Some("sha256:old"));
        let d = decide(
            &consumer(),
            "t",
            "sha256:new",
            &present(None, Progress::Complete),
            Some(&adopted),
            false,
        );
        assert!(d.restart);
        assert_eq!(d.status.state, state::PENDING);
        // Annotated with the old one: restart.
        let d = decide(
            &consumer(),
            "t",
            "sha256:new",
            &present(Some("sha256:old"), Progress::Complete),
            None,
            false,
        );
        assert!(d.restart);
        // Annotated with the current one (after the restart, after an operator restart, on a
        // resync, with status lost): never again.
        for last in [None, Some(&adopted)] {
            let d = decide(
                &consumer(),
                "t",
                "sha256:new",
                &present(Some("sha256:new"), Progress::InProgress),
                last,
                false,
            );
            assert!(!d.restart);
            assert_eq!(d.status.state, state::ROLLING_OUT);
        }
        // Already queued: not twice.
        let d = decide(
            &consumer(),
            "t",
            "sha256:new",
            &present(Some("sha256:new"), Progress::Complete),
            None,
            true,
        );
        assert!(!d.restart);
        assert_eq!(d.status.state, state::PENDING);
    }

    #[test]
    fn missing_forbidden_and_foreign_owned_workloads_are_reported_and_never_restarted() {
        let d = decide(&consumer(), "t", "fp", &Observed::NotFound, None, false);
        assert!(!d.restart && d.status.state == state::NOT_FOUND);
        let d = decide(
            &consumer(),
            "t",
            "fp",
            &Observed::Forbidden("get".into()),
            None,
            false,
        );
        assert!(!d.restart && d.status.state == state::FORBIDDEN);
        assert!(d.status.message.unwrap().contains("consumers.enabled=true"));
        let owned = Observed::Present(Workload {
            annotation: Some("old".into()),
            foreign_owner: Some("argocd-controller".into()),
            progress: Progress::Complete,
        });
        let d = decide(&consumer(), "t", "fp", &owned, None, false);
        assert!(!d.restart && d.status.state == state::CONFLICT);
        assert!(
            d.status
                .message
                .unwrap()
                .contains("credential.tokenmint.dev/t")
        );
    }

    #[test]
    fn a_stuck_rollout_is_moving_until_it_completes() {
        let d = decide(
            &consumer(),
            "t",
            "fp",
            &present(Some("fp"), Progress::Stuck("deadline".into())),
            None,
            false,
        );
        assert_eq!(d.status.state, state::STUCK);
        assert!(moving(&[d.status]));
        let d = decide(
            &consumer(),
            "t",
            "fp",
            &present(Some("fp"), Progress::Complete),
            None,
            false,
        );
        assert!(!moving(&[d.status]));
    }

    #[test]
    fn the_annotation_owner_is_read_from_managed_fields() {
        let entry = |manager: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                json!({
                    "f:spec": {"f:template": {"f:metadata": {"f:annotations": {"f:credential.tokenmint.dev/t": {}}}}}
                }),
            )),
            ..ManagedFieldsEntry::default()
        };
        let key = annotation_key("t");
        assert_eq!(foreign_owner(Some(&[entry(FIELD_MANAGER)]), &key), None);
        assert_eq!(
            foreign_owner(Some(&[entry("argocd")]), &key).as_deref(),
            Some("argocd")
        );
        assert_eq!(
            foreign_owner(Some(&[entry("argocd")]), &annotation_key("other")),
            None
        );
    }

    #[test]
    fn a_deployment_is_complete_when_every_replica_is_new_and_available() {
        let d = |generation: i64,
                 observed: i64,
                 updated: i32,
                 total: i32,
                 available: i32|
         -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "app", "generation": generation},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": {"observedGeneration": observed, "updatedReplicas": updated,
                           "replicas": total, "availableReplicas": available}
            }))
            .unwrap()
        };
        assert_eq!(deployment_progress(&d(2, 2, 2, 2, 2)), Progress::Complete);
        assert_eq!(
            deployment_progress(&d(3, 2, 2, 2, 2)),
            Progress::InProgress,
            "not observed yet"
        );
        assert_eq!(
            deployment_progress(&d(2, 2, 2, 3, 2)),
            Progress::InProgress,
            "an old pod left"
        );
        assert_eq!(deployment_progress(&d(2, 2, 1, 2, 2)), Progress::InProgress);
        let mut stuck = d(2, 2, 1, 3, 2);
        stuck.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({
                "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"app-7\" has timed out progressing."
            }))
            .unwrap(),
        ]);
        assert!(matches!(deployment_progress(&stuck), Progress::Stuck(_)));
    }
}
