//! What Trino reads to check and limit tokenmint credentials itself: its password file
//! (`password-authenticator.name=file`) and its file-based access-control rules
//! (`access-control.name=file`), from the credentials a verifier accepts and the mapping on its
//! `trino` output. Pure: salts come in as seeds.
//!
//! The rules are built so that the order of rules cannot widen anyone's access: each table rule is
//! anchored to one user (an access key) and one exact table, and a mapping may not name a table twice,
//! so at most one rule matches any user and table. Everything not granted is denied: catalogs not
//! named, schema ownership, other users' queries, impersonation (Trino's default without
//! impersonation rules).
//!
//! What Trino 476 does with bad input, tried by hand on this machine: two password lines for one user
//! fail every login (HTTP 500), and a rules file it cannot read (bad JSON, an unknown privilege) fails
//! every query. Neither can be rendered here: lines are one per distinct access key and the rules are
//! typed. A row filter that is not valid SQL is only parsed when its user queries its table, so it
//! fails that user's queries on that table and nobody else's (`tests/trino.rs` proves this one).

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest as _;

use crate::api::Scope;
use crate::api::verifier::{MAX_TRINO_GRANTS, MAX_TRINO_TABLES, TrinoOutput, TrinoPrivilege};
use crate::core::invalid::{InvalidSpec, invalid};
use crate::core::scope;

/// PBKDF2 iterations: the least Trino's file authenticator accepts (`PBKDF2_MIN_ITERATIONS`). As with
/// htpasswd (`docs/htpasswd.md`), a secret key of at least 119 random bits needs no stretching; each
/// first login of a credential costs Trino this much once (it caches successful logins).
pub const PBKDF2_ITERATIONS: u32 = 1000;
const SALT_BYTES: usize = 16;
/// Trino derives as many bytes as the stored hash has; SHA-1's own length.
const HASH_BYTES: usize = 20;

/// A checked `trino` output mapping: tables by resource, privileges by scope type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// By resource.
    tables: BTreeMap<String, Table>,
    /// By scope type.
    privileges: BTreeMap<String, BTreeSet<TrinoPrivilege>>,
    /// The data key of the rules.
    pub rules_key: String,
}

/// A table in Trino, by its three names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Table {
    catalog: String,
    schema: String,
    table: String,
}

/// Trino names a `trino` output may use: what `TRINO_NAME_PATTERN` in the CRD says.
fn is_trino_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with('-')
}

impl Mapping {
    /// Checks `spec.outputs[i].trino` (named `field`), for what the schema says and what it cannot:
    /// two resources may not name one table (two rules would then match one user and table).
    pub fn parse(
        trino: &TrinoOutput,
        password_key: &str,
        field: &str,
    ) -> Result<Mapping, InvalidSpec> {
        const NAME_RULE: &str = "must be 1-128 characters of [a-z0-9_-], not starting with '-' (Trino's lower-case names)";
        if trino.tables.is_empty() || trino.tables.len() > MAX_TRINO_TABLES {
            return Err(invalid(
                format!("{field}.tables"),
                format!("1 to {MAX_TRINO_TABLES} tables"),
            ));
        }
        let mut tables = BTreeMap::new();
        let mut named: BTreeMap<Table, usize> = BTreeMap::new();
        for (i, t) in trino.tables.iter().enumerate() {
            let here = |f: &str| format!("{field}.tables[{i}].{f}");
            if !scope::is_resource(&t.resource) {
                return Err(invalid(here("resource"), scope::RESOURCE_RULE));
            }
            let table = t.table.clone().unwrap_or_else(|| t.resource.to_lowercase());
            for (f, name) in [
                ("catalog", &t.catalog),
                ("schema", &t.schema),
                ("table", &table),
            ] {
                if !is_trino_name(name) {
                    return Err(invalid(here(f), NAME_RULE));
                }
            }
            let table = Table {
                catalog: t.catalog.clone(),
                schema: t.schema.clone(),
                table,
            };
            if let Some(j) = named.insert(table.clone(), i) {
                return Err(invalid(
                    here("table"),
                    format!("names the same table as {field}.tables[{j}]"),
                ));
            }
            if tables.insert(t.resource.clone(), table).is_some() {
                return Err(invalid(
                    here("resource"),
                    "duplicates an earlier table's resource",
                ));
            }
        }
        if trino.privileges.is_empty() || trino.privileges.len() > MAX_TRINO_GRANTS {
            return Err(invalid(
                format!("{field}.privileges"),
                format!("1 to {MAX_TRINO_GRANTS} scope types"),
            ));
        }
        let mut privileges = BTreeMap::new();
        for (i, grant) in trino.privileges.iter().enumerate() {
            let here = |f: &str| format!("{field}.privileges[{i}].{f}");
            if !scope::is_type(&grant.scope_type) {
                return Err(invalid(here("scopeType"), scope::TYPE_RULE));
            }
            let set: BTreeSet<TrinoPrivilege> = grant.privileges.iter().copied().collect();
            if set.is_empty() || set.len() != grant.privileges.len() {
                return Err(invalid(
                    here("privileges"),
                    "1 to 4 of SELECT, INSERT, UPDATE, DELETE, no duplicates",
                ));
            }
            if privileges.insert(grant.scope_type.clone(), set).is_some() {
                return Err(invalid(
                    here("scopeType"),
                    "duplicates an earlier entry's scope type",
                ));
            }
        }
        let rules_key = trino
            .rules_key
            .clone()
            .unwrap_or_else(|| crate::api::verifier::DEFAULT_TRINO_RULES_KEY.to_owned());
        if !crate::api::names::is_data_key(&rules_key) {
            return Err(invalid(
                format!("{field}.rulesKey"),
                "must be 1-253 characters of [-._a-zA-Z0-9], not '.' and not starting with '..'",
            ));
        }
        if rules_key == password_key {
            return Err(invalid(
                format!("{field}.rulesKey"),
                "must differ from key (the password file's)",
            ));
        }
        Ok(Mapping {
            tables,
            privileges,
            rules_key,
        })
    }

    /// The table rules of one user (an access key) holding `scopes` (canonical strings), in table
    /// order. A scope applies to the table its resource names, or to every table when it names none;
    /// a scope whose type or resource the mapping does not name grants nothing. Where several scopes
    /// apply to one table, the privileges add up and their filter applies to all of them; two different
    /// filters on one table are refused (which one was meant cannot be known), naming the resource.
    pub fn user_rules(&self, user: &str, scopes: &[String]) -> Result<Vec<TableRule>, String> {
        let scopes: Vec<Scope> = scopes.iter().filter_map(|s| scope::parse(s).ok()).collect();
        let mut rules = Vec::new();
        for (resource, table) in &self.tables {
            let mut privileges: BTreeSet<TrinoPrivilege> = BTreeSet::new();
            let mut filters: BTreeSet<&str> = BTreeSet::new();
            for scope in &scopes {
                let Some(granted) = self.privileges.get(&scope.type_) else {
                    continue;
                };
                if scope.resource.as_ref().is_some_and(|r| r != resource) {
                    continue;
                }
                privileges.extend(granted);
                filters.extend(scope.filter.as_deref());
            }
            if privileges.is_empty() {
                continue;
            }
            if filters.len() > 1 {
                return Err(format!(
                    "its scopes carry {} different row filters for resource {resource}; keep one",
                    filters.len()
                ));
            }
            rules.push(TableRule {
                user: anchored(user),
                catalog: anchored(&table.catalog),
                schema: anchored(&table.schema),
                table: anchored(&table.table),
                privileges: privileges.into_iter().collect(),
                filter: filters.into_iter().next().map(str::to_owned),
            });
        }
        Ok(rules)
    }

    /// The whole rules file for the given users' table rules (in user order).
    pub fn rules_file<'r>(&self, tables: impl Iterator<Item = &'r TableRule>) -> Vec<u8> {
        // A catalog is read-only unless some mapped scope type may write to a table in it.
        let writes = self
            .privileges
            .values()
            .flatten()
            .any(|p| *p != TrinoPrivilege::Select);
        let catalogs: BTreeSet<&str> = self.tables.values().map(|t| t.catalog.as_str()).collect();
        let mut catalog_rules: Vec<CatalogRule> = catalogs
            .into_iter()
            .map(|c| CatalogRule {
                catalog: Some(anchored(c)),
                allow: if writes { "all" } else { "read-only" },
            })
            .collect();
        catalog_rules.push(CatalogRule {
            catalog: None,
            allow: "none",
        });
        let file = RulesFile {
            catalogs: catalog_rules,
            schemas: vec![SchemaRule { owner: false }],
            tables: tables.collect(),
            queries: vec![QueryRule {
                allow: vec!["execute"],
            }],
        };
        serde_json::to_vec(&file).unwrap_or_else(|_| unreachable!("the rules always serialize"))
    }
}

/// One entry of the rules file's `tables`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableRule {
    user: String,
    catalog: String,
    schema: String,
    table: String,
    privileges: Vec<TrinoPrivilege>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
}

#[derive(serde::Serialize)]
struct RulesFile<'r> {
    catalogs: Vec<CatalogRule>,
    schemas: Vec<SchemaRule>,
    tables: Vec<&'r TableRule>,
    queries: Vec<QueryRule>,
}

#[derive(serde::Serialize)]
struct CatalogRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog: Option<String>,
    allow: &'static str,
}

#[derive(serde::Serialize)]
struct SchemaRule {
    owner: bool,
}

#[derive(serde::Serialize)]
struct QueryRule {
    allow: Vec<&'static str>,
}

/// A Java regex matching exactly `name`: anchored, and every character but `[A-Za-z0-9_]` escaped (a
/// backslash before a non-letter is always a literal in `java.util.regex`).
pub fn anchored(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    out.push('^');
    for c in name.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

/// One password-file line, `accessKey:1000:<salt hex>:<hash hex>` (PBKDF2-HMAC-SHA1, Trino's
/// format), without a line break. The salt comes from `salt_seed` as for htpasswd lines
/// ([`crate::core::htpasswd::line`]): the same credential always gives the same line.
pub fn password_line(access_key: &str, secret_key: &str, salt_seed: &[u8]) -> String {
    let digest = sha2::Sha256::new()
        .chain_update(b"tokenmint trino pbkdf2 salt v1\0")
        .chain_update(salt_seed)
        .finalize();
    let salt = &digest[..SALT_BYTES];
    let hash = pbkdf2_sha1(secret_key, salt, PBKDF2_ITERATIONS);
    format!(
        "{access_key}:{PBKDF2_ITERATIONS}:{}:{}",
        hex::encode(salt),
        hex::encode(hash)
    )
}

fn pbkdf2_sha1(secret_key: &str, salt: &[u8], iterations: u32) -> [u8; HASH_BYTES] {
    let mut out = [0; HASH_BYTES];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(secret_key.as_bytes(), salt, iterations, &mut out);
    out
}

/// Whether a password-file `line` lets `access_key` in with `secret_key`, as Trino checks it.
pub fn verify_line(line: &str, access_key: &str, secret_key: &str) -> bool {
    let mut parts = line.trim_end().split(':');
    let (Some(user), Some(iterations), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(hash)) = (
        iterations.parse::<u32>(),
        hex::decode(salt),
        hex::decode(hash),
    ) else {
        return false;
    };
    user == access_key
        && iterations >= PBKDF2_ITERATIONS
        && hash.len() == HASH_BYTES
        && pbkdf2_sha1(secret_key, &salt, iterations)[..] == hash[..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::verifier::{TrinoGrant, TrinoTable};

    fn mapping() -> Mapping {
        let table = |resource: &str, table: Option<&str>| TrinoTable {
            resource: resource.into(),
            catalog: "tpch".into(),
            schema: "tiny".into(),
            table: table.map(Into::into),
        };
        let grant = |t: &str, p: &[TrinoPrivilege]| TrinoGrant {
            scope_type: t.into(),
            privileges: p.to_vec(),
        };
        Mapping::parse(
            &TrinoOutput {
                tables: vec![table("nation", None), table("a.b", Some("region"))],
                privileges: vec![
                    grant("DATASOURCES:READ", &[TrinoPrivilege::Select]),
                    grant("DATASOURCES:APPEND", &[TrinoPrivilege::Insert]),
                ],
                rules_key: None,
            },
            "password.db",
            "spec.outputs[0].trino",
        )
        .unwrap()
    }

    #[test]
    fn a_password_line_reads_back_and_is_stable() {
        let line = password_line("AK1", "s3cret", b"seed");
        assert_eq!(line, password_line("AK1", "s3cret", b"seed"));
        assert_ne!(line, password_line("AK1", "s3cret", b"other seed"));
        assert!(line.starts_with("AK1:1000:"));
        assert_eq!(line.split(':').nth(2).unwrap().len(), 2 * SALT_BYTES);
        assert_eq!(line.split(':').nth(3).unwrap().len(), 2 * HASH_BYTES);
        assert!(verify_line(&line, "AK1", "s3cret"));
        assert!(!verify_line(&line, "AK1", "s3creT"));
        assert!(!verify_line(&line, "AK2", "s3cret"));
    }

    #[test]
    fn pbkdf2_matches_the_rfc_6070_vector() {
        // RFC 6070, c = 2: PBKDF2-HMAC-SHA1("password", "salt").
        assert_eq!(
            hex::encode(pbkdf2_sha1("password", b"salt", 2)),
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
        );
    }

    #[test]
    fn names_are_anchored_and_escaped() {
        assert_eq!(anchored("AK1"), "^AK1$");
        assert_eq!(anchored("a.b-c_d"), r"^a\.b\-c_d$");
    }

    #[test]
    fn scopes_become_one_rule_per_table_with_their_filter() {
        let m = mapping();
        let rules = m
            .user_rules(
                "AK1",
                &[
                    "DATASOURCES:READ:nation:regionkey = 1".into(),
                    "DATASOURCES:APPEND".into(),
                    "PIPES:READ:nation".into(),
                    "DATASOURCES:READ:unmapped".into(),
                ],
            )
            .unwrap();
        let json = serde_json::to_value(&rules).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"user": "^AK1$", "catalog": "^tpch$", "schema": "^tiny$", "table": "^region$",
                 "privileges": ["INSERT"]},
                {"user": "^AK1$", "catalog": "^tpch$", "schema": "^tiny$", "table": "^nation$",
                 "privileges": ["SELECT", "INSERT"], "filter": "regionkey = 1"},
            ])
        );
        assert_eq!(m.user_rules("AK2", &["PIPES:READ".into()]).unwrap(), vec![]);
        let two = m
            .user_rules(
                "AK1",
                &[
                    "DATASOURCES:READ:nation:regionkey = 1".into(),
                    "DATASOURCES:APPEND:nation:regionkey = 2".into(),
                ],
            )
            .unwrap_err();
        assert!(two.contains("resource nation"), "{two}");
    }

    #[test]
    fn the_rules_file_denies_what_it_does_not_grant() {
        let m = mapping();
        let rules = m.user_rules("AK1", &["DATASOURCES:READ".into()]).unwrap();
        let file: serde_json::Value = serde_json::from_slice(&m.rules_file(rules.iter())).unwrap();
        assert_eq!(
            file["catalogs"],
            serde_json::json!([{"catalog": "^tpch$", "allow": "all"}, {"allow": "none"}])
        );
        assert_eq!(file["schemas"], serde_json::json!([{"owner": false}]));
        assert_eq!(file["queries"], serde_json::json!([{"allow": ["execute"]}]));
        assert_eq!(file["tables"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn mapping_mistakes_name_their_field() {
        let base = TrinoOutput {
            tables: vec![TrinoTable {
                resource: "nation".into(),
                catalog: "tpch".into(),
                schema: "tiny".into(),
                table: None,
            }],
            privileges: vec![TrinoGrant {
                scope_type: "DATASOURCES:READ".into(),
                privileges: vec![TrinoPrivilege::Select],
            }],
            rules_key: None,
        };
        let field = |f: fn(&mut TrinoOutput)| {
            let mut t = base.clone();
            f(&mut t);
            Mapping::parse(&t, "password.db", "t")
                .map(|_| ())
                .unwrap_err()
                .field
        };
        assert_eq!(
            field(|t| t.tables[0].catalog = "TPCH".into()),
            "t.tables[0].catalog"
        );
        assert_eq!(
            field(|t| t.tables[0].schema = "ti ny".into()),
            "t.tables[0].schema"
        );
        assert_eq!(
            field(|t| t.tables[0].resource = "a*".into()),
            "t.tables[0].resource"
        );
        assert_eq!(
            field(|t| {
                let mut other = t.tables[0].clone();
                other.resource = "n2".into();
                other.table = Some("nation".into());
                t.tables.push(other);
            }),
            "t.tables[1].table"
        );
        assert_eq!(
            field(|t| t.privileges[0].scope_type = "read".into()),
            "t.privileges[0].scopeType"
        );
        assert_eq!(
            field(|t| t.privileges[0].privileges.push(TrinoPrivilege::Select)),
            "t.privileges[0].privileges"
        );
        assert_eq!(
            field(|t| t.rules_key = Some("password.db".into())),
            "t.rulesKey"
        );
        assert!(Mapping::parse(&base, "password.db", "t").is_ok());
    }
}
