//! `kubectl apitoken list`: the token table (Starburst's list: client ID, description, role, status, created).

use jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tokenmint::api::ApiToken;

use crate::cluster::Target;
use crate::display::{NONE, Table, age, or_none, relative};
use crate::error::{APITOKENS, Error, Op};

/// `list [-n NS | -A] [-l SELECTOR] [-o FORMAT]`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// List ApiTokens in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only ApiTokens whose labels match, in kubectl's syntax: team=analytics,tier!=dev,
    /// 'env in (prod, staging)', '!legacy'.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<ListOutput>,
}

impl ListArgs {
    /// The list call's parameters: the label selector goes to the API server, which does the
    /// matching (and rejects a selector it cannot parse).
    fn params(&self) -> ListParams {
        match &self.selector {
            Some(selector) => ListParams::default().labels(selector),
            None => ListParams::default(),
        }
    }
}

/// Output formats of `list`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListOutput {
    /// The default table plus SECRET, ROTATIONS, FINGERPRINT, EXPIRES and SCOPES.
    Wide,
    /// A `v1/List` of the ApiTokens.
    Json,
    /// A `v1/List` of the ApiTokens.
    Yaml,
}

pub async fn run(target: &Target, args: &ListArgs) -> Result<(), Error> {
    let (all_namespaces, output) = (args.all_namespaces, args.output);
    let (api, namespace) = if all_namespaces {
        (Api::<ApiToken>::all(target.client.clone()), None)
    } else {
        (target.tokens(), Some(target.namespace.as_str()))
    };
    let op = Op {
        verb: "list",
        resource: APITOKENS,
        name: None,
        namespace,
        url: &target.url,
    };
    let mut tokens = api
        .list(&args.params())
        .await
        .map_err(|e| match (&args.selector, e) {
            (Some(selector), kube::Error::Api(status)) if status.code == 400 => Error::Invalid(
                format!("invalid --selector {selector:?}: {}", status.message),
            ),
            (_, e) => op.error(e),
        })?
        .items;
    tokens.sort_by_key(|t| (t.namespace(), t.name_any()));
    match output {
        Some(ListOutput::Json) => {
            let text = serde_json::to_string_pretty(&as_list(tokens))
                .map_err(|e| Error::Io(format!("encoding JSON: {e}")))?;
            println!("{text}");
        }
        Some(ListOutput::Yaml) => {
            let text = serde_yaml::to_string(&as_list(tokens))
                .map_err(|e| Error::Io(format!("encoding YAML: {e}")))?;
            print!("{text}");
        }
        // Like kubectl, the same words whether or not a selector narrowed the list.
        None | Some(ListOutput::Wide) if tokens.is_empty() => match namespace {
            Some(ns) => eprintln!("No ApiTokens found in {ns} namespace."),
            None => eprintln!("No ApiTokens found."),
        },
        None | Some(ListOutput::Wide) => {
            let wide = output == Some(ListOutput::Wide);
            print!(
                "{}",
                table(&tokens, Timestamp::now(), all_namespaces, wide).render()
            );
        }
    }
    Ok(())
}

/// The tokens as kubectl's `-o json|yaml` prints a list; managed fields are left out, as kubectl does.
fn as_list(mut tokens: Vec<ApiToken>) -> serde_json::Value {
    for token in &mut tokens {
        token.metadata.managed_fields = None;
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": tokens,
    })
}

/// The table of `tokens` at `now`.
pub fn table(tokens: &[ApiToken], now: Timestamp, all_namespaces: bool, wide: bool) -> Table {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "ACCESS KEY",
        "DESCRIPTION",
        "ROLE",
        "PHASE",
        "CREATED",
        "NEXT ROTATION",
        "LAST USED",
    ]);
    if wide {
        headers.extend([
            "SECRET",
            "ROTATIONS",
            "FINGERPRINT",
            "PREVIOUS",
            "EXPIRES",
            "SCOPES",
        ]);
    }
    let mut table = Table::new(headers);
    for token in tokens {
        let status = token.status.clone().unwrap_or_default();
        let mut row = Vec::new();
        if all_namespaces {
            row.push(token.namespace().unwrap_or_default());
        }
        row.extend([
            token.name_any(),
            or_none(status.access_key.as_deref()),
            or_none(token.spec.description.as_deref()),
            token.spec.role.clone(),
            status
                .phase
                .map_or_else(|| NONE.to_owned(), |p| p.as_str().to_owned()),
            age(token.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
            relative(status.next_rotation_at.as_ref().map(|t| t.0), now),
            last_used(&status, now),
        ]);
        if wide {
            let expires = status
                .expires_at
                .as_ref()
                .or(token.spec.expires_at.as_ref())
                .map(|t| t.0);
            let scopes: Vec<String> = token
                .spec
                .scopes
                .iter()
                .flatten()
                .map(tokenmint::api::Scope::canonical)
                .collect();
            row.extend([
                status
                    .secret_name
                    .clone()
                    .unwrap_or_else(|| token.secret_name().to_owned()),
                status
                    .rotations
                    .map_or_else(|| NONE.to_owned(), |r| r.to_string()),
                or_none(status.fingerprint.as_deref()),
                // During an overlap: the access key still valid, and until when.
                status.previous.as_ref().map_or_else(
                    || NONE.to_owned(),
                    |p| {
                        let until = relative(Some(p.retires_at.0), now);
                        match &p.last_used_at {
                            Some(used) => format!(
                                "{} until {until}, used {}",
                                p.access_key,
                                relative(Some(used.0), now)
                            ),
                            None => format!("{} until {until}", p.access_key),
                        }
                    },
                ),
                relative(expires, now),
                or_none(Some(&scopes.join(","))),
            ]);
        }
        table.push(row);
    }
    table
}

/// When any credential of the token was last let in: `3h ago`; `never` when an authz that reports
/// use checks it and has not let it in; `unknown` when none does (an htpasswd server cannot say).
fn last_used(status: &tokenmint::api::ApiTokenStatus, now: Timestamp) -> String {
    match (&status.last_used_at, status.usage_tracked) {
        (Some(at), _) => relative(Some(at.0), now),
        (None, true) => "never".to_owned(),
        (None, false) => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use tokenmint::api::{ApiTokenSpec, ApiTokenStatus, Phase};
    use tokenmint::core::scope::parse as parse_scope;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn token(namespace: &str, name: &str) -> ApiToken {
        let mut token = ApiToken::new(
            name,
            ApiTokenSpec {
                role: "reader".into(),
                description: Some("Superset dashboards".into()),
                scopes: Some(vec![
                    parse_scope("DATASOURCES:READ:events:tenant_id = 42").unwrap(),
                    parse_scope("PIPES:READ:top_pages").unwrap(),
                ]),
                ..ApiTokenSpec::default()
            },
        );
        token.metadata.namespace = Some(namespace.into());
        token.metadata.creation_timestamp = Some(Time(now() - SignedDuration::from_secs(300)));
        token
    }

    fn active(mut token: ApiToken) -> ApiToken {
        token.status = Some(ApiTokenStatus {
            phase: Some(Phase::Active),
            access_key: Some("XkQBXKr652MV1VF9".into()),
            fingerprint: Some("sha256:0123456789abcdef".into()),
            secret_name: Some("superset-reader".into()),
            next_rotation_at: Some(Time(now() + SignedDuration::from_hours(29 * 24 + 23))),
            rotations: Some(2),
            ..ApiTokenStatus::default()
        });
        token
    }

    #[test]
    fn default_table_has_the_starburst_columns() {
        let tokens = [
            active(token("analytics", "superset-reader")),
            token("analytics", "new"),
        ];
        assert_eq!(
            table(&tokens, now(), false, false).render(),
            "NAME              ACCESS KEY         DESCRIPTION           ROLE     PHASE    CREATED   NEXT ROTATION   LAST USED\n\
             superset-reader   XkQBXKr652MV1VF9   Superset dashboards   reader   Active   5m        in 29d          unknown\n\
             new               <none>             Superset dashboards   reader   <none>   5m        <none>          unknown\n"
        );
    }

    #[test]
    fn last_used_tells_a_time_from_never_from_unknown() {
        let mut used = active(token("analytics", "used"));
        let status = used.status.as_mut().unwrap();
        status.last_used_at = Some(Time(now() - SignedDuration::from_hours(3)));
        status.usage_tracked = true;
        let mut quiet = active(token("analytics", "quiet"));
        quiet.status.as_mut().unwrap().usage_tracked = true;
        let untracked = active(token("analytics", "htpasswd-only"));
        let t = table(&[used, quiet, untracked], now(), false, false);
        let column: Vec<&str> = t.rows.iter().map(|r| r[7].as_str()).collect();
        assert_eq!(column, ["3h ago", "never", "unknown"]);
    }

    #[test]
    fn all_namespaces_adds_the_namespace_first() {
        let rendered = table(
            &[active(token("analytics", "superset-reader"))],
            now(),
            true,
            false,
        )
        .render();
        let mut lines = rendered.lines();
        assert!(lines.next().unwrap().starts_with("NAMESPACE   NAME "));
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("analytics   superset-reader ")
        );
    }

    #[test]
    fn wide_adds_secret_rotations_fingerprint_expiry_and_scopes() {
        let t = table(
            &[active(token("analytics", "superset-reader"))],
            now(),
            false,
            true,
        );
        assert_eq!(
            &t.headers[8..],
            &[
                "SECRET",
                "ROTATIONS",
                "FINGERPRINT",
                "PREVIOUS",
                "EXPIRES",
                "SCOPES"
            ]
        );
        assert_eq!(
            &t.rows[0][8..],
            &[
                "superset-reader",
                "2",
                "sha256:0123456789abcdef",
                "<none>",
                "<none>",
                "DATASOURCES:READ:events:tenant_id = 42,PIPES:READ:top_pages"
            ]
        );
    }

    #[test]
    fn a_selector_becomes_the_list_calls_label_selector() {
        let args = |selector: Option<&str>| ListArgs {
            all_namespaces: false,
            selector: selector.map(str::to_owned),
            output: None,
        };
        assert_eq!(args(None).params().label_selector, None);
        assert_eq!(
            args(Some("team=analytics,tier!=dev"))
                .params()
                .label_selector
                .as_deref(),
            Some("team=analytics,tier!=dev")
        );
    }

    #[test]
    fn json_list_leaves_out_managed_fields() {
        let mut t = token("analytics", "superset-reader");
        t.metadata.managed_fields = Some(vec![Default::default()]);
        let list = as_list(vec![t]);
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"][0]["metadata"]["name"], "superset-reader");
        assert!(list["items"][0]["metadata"].get("managedFields").is_none());
    }
}
