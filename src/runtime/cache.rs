//! Watch caches that the reconciler also moves forward with what its own writes returned.
//!
//! Between a write and its watch event, a reconcile woken by the other watch (the new Secret's event
//! before the token's status event, or the reverse) would plan from the older copy and repeat the
//! write: a second status apply, or a create that fails and a re-read. Putting the API server's answer
//! into the cache avoids that. The rule, in one place ([`Following::advance`]): an answer only ever
//! replaces the exact version the write was based on, so anything the watch delivered meanwhile
//! wins, and the cache still converges on the watch.
//!
//! What a cache keeps is its [`Storage`]: the token cache keeps each token compressed with the
//! few fields read of every token beside it ([`CachedTokens`]), the Secret cache keeps JSON of the
//! Secrets a known token or verifier names, and only the identity of every other ([`JsonSecrets`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::verifier::ApiTokenVerifier;
use crate::api::{ApiToken, GROUP};
use crate::core::token::secret::{self, Packed};
use crate::runtime::compact::{self, Dictionary};
use crate::runtime::keys::{Key, key_from, meta_key};
use crate::runtime::watched::{Cached, TokenObject};

/// Where a cache keeps its objects.
pub trait Storage<K: Resource<DynamicType = ()>>: Send {
    /// Applies one watch event (or the outcome of one of our own writes, shaped as one).
    fn apply(&mut self, event: &watcher::Event<K>);
    /// The resourceVersion of what is kept under `key`: `None` when nothing is, `Some(None)` for an
    /// object without one.
    fn version(&self, key: &ObjectRef<K>) -> Option<Option<String>>;
}

/// A cache fed by a watch and moved forward by our own writes.
pub struct Following<K, S> {
    storage: Mutex<S>,
    kind: PhantomData<fn(K)>,
}

impl<K: Resource<DynamicType = ()>, S: Storage<K>> Following<K, S> {
    pub fn new(storage: S) -> Self {
        Following {
            storage: Mutex::new(storage),
            kind: PhantomData,
        }
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        self.storage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The watch stream's side: applies one watch event.
    pub fn apply(&self, event: &watcher::Event<K>) {
        self.lock().apply(event);
    }

    /// Records the outcome of our own write to `key`, if the cache still holds `based_on` (the
    /// resourceVersion the write started from; `None` for an object that was absent).
    pub fn advance(&self, key: &ObjectRef<K>, based_on: Option<&str>, outcome: watcher::Event<K>) {
        let mut storage = self.lock();
        let held = storage.version(key);
        if held.as_ref().map(|v| v.as_deref()) == based_on.map(Some) {
            storage.apply(&outcome);
        }
    }
}

/// The ApiToken cache: each token as a [`Cached`] under its `namespace/name`, which the queue
/// and the wake-ups share. The token controller, the verifiers and `/metrics` read it.
pub type TokenCache = Following<TokenObject, CachedTokens>;

impl TokenCache {
    /// An empty token cache.
    pub fn tokens() -> Self {
        Following::new(CachedTokens::default())
    }

    /// The token at `key` (`namespace/name`), as last seen.
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.lock().tokens.get(key).cloned()
    }

    /// Whether a token is kept at `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().tokens.contains_key(key)
    }

    /// Every token, as last seen.
    pub fn state(&self) -> Vec<Arc<Cached>> {
        self.lock().tokens.values().cloned().collect()
    }

    /// The key of every token.
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.lock().tokens.keys().cloned().collect()
    }
}

/// Tokens as [`Cached`], with a relist swapped in only when complete (as a reflector does).
#[derive(Default)]
pub struct CachedTokens {
    tokens: HashMap<Arc<str>, Arc<Cached>>,
    /// A relist in progress.
    relisting: Option<HashMap<Arc<str>, Arc<Cached>>>,
}

impl CachedTokens {
    /// `object` as kept, under the key string the cache already holds for it if any, so that the
    /// queue and the wake-ups keep sharing it.
    fn entry(&self, object: &TokenObject) -> (Arc<str>, Arc<Cached>) {
        let key = meta_key(object.meta());
        let key = match self.tokens.get_key_value(&*key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(key),
        };
        (key.clone(), Arc::new(Cached::new(key, object)))
    }
}

impl Storage<TokenObject> for CachedTokens {
    fn apply(&mut self, event: &watcher::Event<TokenObject>) {
        match event {
            watcher::Event::Apply(object) => {
                let (key, cached) = self.entry(object);
                self.tokens.insert(key, cached);
            }
            watcher::Event::Delete(object) => {
                self.tokens.remove(&*meta_key(object.meta()));
            }
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(object) => {
                let (key, cached) = self.entry(object);
                self.relisting.get_or_insert_default().insert(key, cached);
            }
            watcher::Event::InitDone => {
                self.tokens = self.relisting.take().unwrap_or_default();
            }
        }
    }

    fn version(&self, key: &ObjectRef<TokenObject>) -> Option<Option<String>> {
        let cached = self.tokens.get(&*key_of(key))?;
        Some(cached.resource_version().map(Into::into))
    }
}

/// The Secret cache, kept as JSON: as Rust structs (maps and many small strings) one of our Secrets
/// takes about 3.9 KiB, serialized about 1.3 KiB; at 10,000 tokens that is 38 MiB against 14 MiB.
/// The credential keys, most of those bytes, are kept as the credentials they are forms of
/// ([`Packed`]). A reconcile deserializes the one Secret it needs, in microseconds.
pub type SecretCache = Following<Secret, JsonSecrets>;

/// Whether the controller a Secret names (an ApiToken or an ApiTokenVerifier in its namespace)
/// is known and names that Secret as its own: the token's Secret, one of the verifier's outputs.
pub type Claims = Arc<dyn Fn(&Secret, &OwnerReference) -> bool + Send + Sync>;

/// What the cache holds of a Secret. `Debug` names it, never its data.
#[derive(Clone, PartialEq)]
pub enum Kept {
    /// All of it that tokenmint reads.
    Whole(Secret),
    /// Its identity only: name, namespace, uid, resourceVersion, deletionTimestamp, our labels and
    /// its controller reference. Whoever needs more reads it from the API server
    /// ([`SecretCache::refresh`]).
    Trimmed(Secret),
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let meta = &self.secret().metadata;
        let form = match self {
            Kept::Whole(_) => "Whole",
            Kept::Trimmed(_) => "Trimmed",
        };
        f.debug_struct(form)
            .field("namespace", &meta.namespace)
            .field("name", &meta.name)
            .field("resource_version", &meta.resource_version)
            .finish_non_exhaustive()
    }
}

impl Kept {
    /// The Secret, whole or trimmed.
    pub fn secret(&self) -> &Secret {
        match self {
            Kept::Whole(secret) | Kept::Trimmed(secret) => secret,
        }
    }

    /// The Secret if the cache held all of it.
    pub fn whole(self) -> Option<Secret> {
        match self {
            Kept::Whole(secret) => Some(secret),
            Kept::Trimmed(_) => None,
        }
    }
}

impl SecretCache {
    /// An empty Secret cache that keeps whole only the Secrets `claims` says are claimed.
    pub fn json(claims: Claims) -> Self {
        Following::new(JsonSecrets {
            claims,
            secrets: HashMap::new(),
            relisting: None,
        })
    }

    /// The Secret at `key`, as last seen.
    pub fn get(&self, key: &ObjectRef<Secret>) -> Option<Kept> {
        self.lock().get(key)
    }

    /// Reads from the API server (through `api`, in the Secret's namespace) a Secret the cache kept
    /// trimmed, and keeps what it found in its place ([`SecretCache::refresh`]).
    pub async fn read_again(
        &self,
        api: &kube::Api<Secret>,
        key: &ObjectRef<Secret>,
        trimmed: &Secret,
    ) -> Result<Option<Secret>, kube::Error> {
        let read = api.get_opt(&key.name).await?;
        self.refresh(key, trimmed, read.clone());
        Ok(read)
    }

    /// What a read from the API server found of a Secret the cache kept trimmed: kept in its place
    /// if the cache still holds the version it replaces, whole if it is claimed by now (its token or
    /// verifier was not known yet when its watch event came).
    pub fn refresh(&self, key: &ObjectRef<Secret>, trimmed: &Secret, read: Option<Secret>) {
        let based_on = trimmed.metadata.resource_version.as_deref();
        let event = match read {
            Some(mut secret) => {
                secret.metadata.managed_fields = None;
                watcher::Event::Apply(secret)
            }
            None => watcher::Event::Delete(trimmed.clone()),
        };
        self.advance(key, based_on, event);
    }

    /// The resourceVersion of the Secret at `key`, without decoding it: whoever derived something
    /// from a Secret can tell whether it is still the one they read.
    pub fn resource_version(&self, key: &ObjectRef<Secret>) -> Option<String> {
        let storage = self.lock();
        let version = &storage.secrets.get(&key_of(key))?.resource_version;
        version.as_deref().map(Into::into)
    }
}

/// Secrets as JSON, with a relist swapped in only when complete (as a reflector does).
///
/// Anyone who may create Secrets may give one our label and a controller reference to an ApiToken
/// of theirs, and make it as large as the API server allows. So a Secret is kept whole only when
/// [`Claims`] says its controller names it (one Secret per token, the declared outputs of each
/// verifier), only with the data keys a token Secret has ([`secret::is_read_key`]), and only up to
/// [`TOKEN_SECRET_BUDGET`]; anything else is kept as its identity, a few hundred bytes whatever
/// it carries.
pub struct JsonSecrets {
    claims: Claims,
    secrets: HashMap<Key, StoredSecret>,
    /// A relist in progress.
    relisting: Option<HashMap<Key, StoredSecret>>,
}

/// The most a token Secret may take in the cache, compressed; one over it is kept trimmed and read
/// from the API server by the reconcile that needs it. Ours take about 100 bytes; the largest a
/// spec allows (64 scopes with 1 KiB filters) about 30 KiB.
pub const TOKEN_SECRET_BUDGET: usize = 64 * 1024;

/// The most a verifier output may take in the cache, compressed: an output holds at most 1 MiB.
pub const OUTPUT_SECRET_BUDGET: usize = 2 * 1024 * 1024;

fn key_of<K: kube::runtime::reflector::Lookup>(key: &ObjectRef<K>) -> Key {
    key_from(key.namespace.as_deref(), &key.name)
}

/// What Secrets' JSON is compressed against: an issued token's Secret, as kept.
fn dictionary() -> &'static Dictionary {
    static SECRETS: LazyLock<Dictionary> = LazyLock::new(|| {
        let sample = JsonSecrets::split(compact::issued().1.clone());
        Dictionary::new(sample.map(|(json, _)| json).unwrap_or_default())
    });
    &SECRETS
}

struct StoredSecret {
    resource_version: Option<Box<str>>,
    /// The Secret without the credential keys that `packed` holds, as JSON compressed
    /// ([`crate::runtime::compact`]).
    json: Box<[u8]>,
    packed: Packed,
    whole: bool,
}

/// The controller reference of `secret` if its controller is one of our kinds.
fn our_controller(secret: &Secret) -> Option<&OwnerReference> {
    let controller = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let ours =
        controller.kind == ApiToken::kind(&()) || controller.kind == ApiTokenVerifier::kind(&());
    (ours && controller.api_version.starts_with(GROUP)).then_some(controller)
}

/// What a trimmed Secret keeps: enough to name it, to tell whose it is and which version it is.
fn identity(secret: &Secret) -> Secret {
    let meta = &secret.metadata;
    let labels = meta.labels.as_ref().map(|labels| {
        labels
            .iter()
            .filter(|(k, _)| secret::OUR_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    Secret {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            labels,
            owner_references: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

impl JsonSecrets {
    fn key(secret: &Secret) -> Key {
        meta_key(&secret.metadata)
    }

    /// `secret` as kept: whole if claimed and within its budget, else trimmed.
    fn stored(&self, secret: &Secret) -> Option<StoredSecret> {
        let whole = our_controller(secret)
            .filter(|controller| (self.claims)(secret, controller))
            .and_then(|controller| {
                let mut kept = secret.clone();
                let budget = if controller.kind == ApiToken::kind(&()) {
                    if let Some(data) = kept.data.as_mut() {
                        data.retain(|k, _| secret::is_read_key(k));
                    }
                    TOKEN_SECRET_BUDGET
                } else {
                    OUTPUT_SECRET_BUDGET
                };
                let stored = Self::pack(kept, true)?;
                (stored.json.len() + stored.packed.len() <= budget).then_some(stored)
            });
        whole.or_else(|| Self::pack(identity(secret), false))
    }

    fn pack(secret: Secret, whole: bool) -> Option<StoredSecret> {
        let resource_version = secret.metadata.resource_version.as_deref().map(Into::into);
        let (json, packed) = Self::split(secret)?;
        Some(StoredSecret {
            resource_version,
            json: dictionary().pack(&json),
            packed,
            whole,
        })
    }

    /// `secret` as JSON without its credential keys, and those keys packed.
    fn split(mut secret: Secret) -> Option<(Vec<u8>, Packed)> {
        let packed = secret.data.as_mut().map(Packed::take).unwrap_or_default();
        Some((serde_json::to_vec(&secret).ok()?, packed))
    }

    fn get(&self, key: &ObjectRef<Secret>) -> Option<Kept> {
        let stored = self.secrets.get(&key_of(key))?;
        let mut secret: Secret =
            serde_json::from_slice(&dictionary().unpack(&stored.json)?).ok()?;
        if stored.packed != Packed::default() {
            stored.packed.restore(secret.data.get_or_insert_default());
        }
        Some(if stored.whole {
            Kept::Whole(secret)
        } else {
            Kept::Trimmed(secret)
        })
    }
}

impl Storage<Secret> for JsonSecrets {
    fn apply(&mut self, event: &watcher::Event<Secret>) {
        match event {
            watcher::Event::Apply(secret) => match self.stored(secret) {
                Some(stored) => {
                    self.secrets.insert(Self::key(secret), stored);
                }
                None => {
                    self.secrets.remove(&Self::key(secret));
                }
            },
            watcher::Event::Delete(secret) => {
                self.secrets.remove(&Self::key(secret));
            }
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(secret) => {
                if let Some(stored) = self.stored(secret) {
                    self.relisting
                        .get_or_insert_default()
                        .insert(Self::key(secret), stored);
                }
            }
            watcher::Event::InitDone => {
                self.secrets = self.relisting.take().unwrap_or_default();
            }
        }
    }

    fn version(&self, key: &ObjectRef<Secret>) -> Option<Option<String>> {
        let stored = self.secrets.get(&key_of(key))?;
        Some(stored.resource_version.as_deref().map(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    /// Claims as the operator's for tokens: a Secret is its controller's when it bears its name.
    fn by_name() -> Claims {
        Arc::new(|secret: &Secret, controller: &OwnerReference| {
            secret.metadata.name.as_deref() == Some(controller.name.as_str())
        })
    }

    fn cache() -> SecretCache {
        SecretCache::json(by_name())
    }

    fn secret(name: &str, version: &str, owned: bool) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                owner_references: owned.then(|| {
                    vec![OwnerReference {
                        api_version: "tokenmint.dev/v1alpha1".into(),
                        kind: "ApiToken".into(),
                        name: name.into(),
                        uid: "u".into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "password".into(),
                ByteString(b"secret".to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn key(name: &str) -> ObjectRef<Secret> {
        ObjectRef::new(name).within("ns")
    }

    fn version_of(cache: &SecretCache, name: &str) -> Option<String> {
        cache
            .get(&key(name))?
            .secret()
            .metadata
            .resource_version
            .clone()
    }

    #[test]
    fn a_relist_is_served_only_once_complete_and_drops_what_is_gone() {
        let cache = cache();
        cache.apply(&watcher::Event::Apply(secret("a", "1", true)));
        cache.apply(&watcher::Event::Apply(secret("b", "1", true)));
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(secret("a", "5", true)));
        // Mid-relist: the previous complete view.
        assert_eq!(version_of(&cache, "a").as_deref(), Some("1"));
        assert!(cache.get(&key("b")).is_some());
        cache.apply(&watcher::Event::InitDone);
        assert_eq!(version_of(&cache, "a").as_deref(), Some("5"));
        assert!(
            cache.get(&key("b")).is_none(),
            "deleted while the watch was down"
        );
    }

    #[test]
    fn our_write_replaces_only_the_version_it_was_based_on() {
        let cache = cache();
        cache.apply(&watcher::Event::Apply(secret("a", "1", true)));
        cache.advance(
            &key("a"),
            Some("1"),
            watcher::Event::Apply(secret("a", "2", true)),
        );
        assert_eq!(version_of(&cache, "a").as_deref(), Some("2"));
        // The watch delivered a newer version meanwhile: a late answer based on "2" must not undo it.
        cache.apply(&watcher::Event::Apply(secret("a", "3", true)));
        cache.advance(
            &key("a"),
            Some("2"),
            watcher::Event::Apply(secret("a", "2b", true)),
        );
        assert_eq!(version_of(&cache, "a").as_deref(), Some("3"));
    }

    #[test]
    fn a_create_lands_only_where_nothing_was_seen() {
        let cache = cache();
        cache.advance(
            &key("new"),
            None,
            watcher::Event::Apply(secret("new", "1", true)),
        );
        assert_eq!(version_of(&cache, "new").as_deref(), Some("1"));
        cache.advance(
            &key("new"),
            None,
            watcher::Event::Apply(secret("new", "9", true)),
        );
        assert_eq!(version_of(&cache, "new").as_deref(), Some("1"));
        // A delete of ours is recorded the same way.
        let gone = secret("new", "1", true);
        cache.advance(&key("new"), Some("1"), watcher::Event::Delete(gone));
        assert!(cache.get(&key("new")).is_none());
    }

    #[test]
    fn secrets_that_are_not_tokenmints_are_kept_without_data() {
        let cache = cache();
        cache.apply(&watcher::Event::Apply(secret("mine", "1", true)));
        cache.apply(&watcher::Event::Apply(secret("ballast", "1", false)));
        let mine = cache.get(&key("mine")).unwrap().whole().unwrap();
        assert!(mine.data.is_some());
        let Some(Kept::Trimmed(ballast)) = cache.get(&key("ballast")) else {
            panic!("kept whole")
        };
        assert!(ballast.data.is_none());
        assert_eq!(ballast.metadata.resource_version.as_deref(), Some("1"));
    }

    /// A Secret anyone could write: our label, a controller reference to the token `owner`, and
    /// `bytes` of random data under `key`, among annotations and more owner references.
    fn planted(name: &str, owner: &str, key: &str, bytes: usize) -> Secret {
        let mut planted = secret(name, "7", true);
        let reference = &mut planted.metadata.owner_references.as_mut().unwrap()[0];
        reference.name = owner.into();
        let mut junk = vec![0u8; bytes];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut junk);
        planted
            .data
            .get_or_insert_default()
            .insert(key.into(), ByteString(junk));
        planted.metadata.labels = Some(BTreeMap::from([
            (secret::MANAGED_BY_LABEL.into(), "tokenmint".into()),
            ("team".into(), "x".repeat(60)),
        ]));
        planted.metadata.annotations = Some(BTreeMap::from([("note".into(), "y".repeat(bytes))]));
        planted
    }

    fn kept_bytes(cache: &SecretCache, name: &str) -> usize {
        let storage = cache.lock();
        let stored = &storage.secrets[&key_of(&key(name))];
        stored.json.len() + stored.packed.len()
    }

    #[test]
    fn a_secret_its_controller_does_not_name_keeps_its_identity_only() {
        let cache = cache();
        for (name, data_key) in [("forged-1", "blob"), ("forged-2", "scopes")] {
            cache.apply(&watcher::Event::Apply(planted(
                name,
                "bait",
                data_key,
                1 << 20,
            )));
            let Some(Kept::Trimmed(kept)) = cache.get(&key(name)) else {
                panic!("{name} kept whole")
            };
            assert!(kept.data.is_none() && kept.metadata.annotations.is_none());
            assert_eq!(
                kept.metadata.uid,
                planted(name, "bait", data_key, 0).metadata.uid
            );
            let labels = kept.metadata.labels.unwrap();
            assert_eq!(
                labels.keys().collect::<Vec<_>>(),
                [secret::MANAGED_BY_LABEL]
            );
            assert_eq!(kept.metadata.owner_references.unwrap()[0].name, "bait");
            assert!(
                kept_bytes(&cache, name) < 512,
                "{}",
                kept_bytes(&cache, name)
            );
        }
    }

    #[test]
    fn a_token_secret_keeps_only_the_keys_tokenmint_reads_and_only_within_its_budget() {
        let cache = cache();
        // Its own token's Secret with someone's large key beside ours: the key is not kept.
        let mut own = planted("bait", "bait", "blob", 1 << 20);
        own.metadata.annotations = None;
        cache.apply(&watcher::Event::Apply(own));
        let kept = cache.get(&key("bait")).unwrap().whole().unwrap();
        let data = kept.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["password"]);
        assert!(kept_bytes(&cache, "bait") < 1024);
        // Filled under a key tokenmint reads: over the budget, trimmed, read from the API instead.
        let full = planted("bait", "bait", "scopes", TOKEN_SECRET_BUDGET + 1);
        cache.apply(&watcher::Event::Apply(full));
        assert!(matches!(cache.get(&key("bait")), Some(Kept::Trimmed(_))));
    }

    #[test]
    fn debug_names_a_kept_secret_and_shows_none_of_its_data() {
        let kept = Kept::Whole(secret("t", "1", true));
        let shown = format!("{kept:?}");
        assert!(
            shown.contains("\"t\"") && shown.contains("\"1\""),
            "{shown}"
        );
        assert!(
            !shown.contains("secret") && !shown.contains("115"),
            "{shown}"
        );
    }

    #[test]
    fn a_trimmed_secret_read_again_is_kept_whole_once_claimed() {
        let claimed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let known = claimed.clone();
        let cache = SecretCache::json(Arc::new(move |_: &Secret, _: &OwnerReference| {
            known.load(std::sync::atomic::Ordering::Relaxed)
        }));
        cache.apply(&watcher::Event::Apply(secret("t", "1", true)));
        let Some(Kept::Trimmed(trimmed)) = cache.get(&key("t")) else {
            panic!("its token was not known yet")
        };
        claimed.store(true, std::sync::atomic::Ordering::Relaxed);
        cache.refresh(&key("t"), &trimmed, Some(secret("t", "1", true)));
        assert_eq!(
            cache.get(&key("t")),
            Some(Kept::Whole(secret("t", "1", true)))
        );
        // A read that found it gone removes it; one based on a version no longer held changes nothing.
        let stale = secret("t", "0", true);
        cache.refresh(&key("t"), &stale, Some(secret("t", "2", true)));
        assert_eq!(version_of(&cache, "t").as_deref(), Some("1"));
        cache.refresh(&key("t"), &secret("t", "1", true), None);
        assert!(cache.get(&key("t")).is_none());
    }

    #[test]
    fn a_token_secret_comes_back_exactly_as_seen() {
        let credential = crate::core::credential::Credential {
            prefix: "tm_".into(),
            access_key: "AK1".into(),
            secret_key: "s3cret".into(),
        };
        let mut seen = secret("t", "1", true);
        let bearer = credential.bearer();
        let basic = credential.basic();
        seen.data = Some(
            [
                ("username", "AK1".to_owned()),
                ("password", "s3cret".to_owned()),
                ("token", bearer.clone()),
                ("basic", basic.clone()),
                ("authorization-bearer", format!("Bearer {bearer}")),
                ("authorization-basic", format!("Basic {basic}")),
                ("role", "reader".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
            .collect(),
        );
        let cache = cache();
        cache.apply(&watcher::Event::Apply(seen.clone()));
        assert_eq!(cache.get(&key("t")), Some(Kept::Whole(seen.clone())));
        // What is kept: the Secret without the six forms, and the credential once.
        let storage = cache.lock();
        let stored = &storage.secrets[&key_of(&key("t"))];
        let json = dictionary().unpack(&stored.json).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("username"));
        assert!(json.len() < serde_json::to_vec(&seen).unwrap().len());
    }

    #[test]
    fn a_secret_like_the_sample_is_kept_in_a_third_of_its_json() {
        let mut seen = compact::issued().1.clone();
        seen.metadata.name = Some("payments-api".into());
        seen.metadata.owner_references.as_mut().unwrap()[0].name = "payments-api".into();
        seen.metadata.uid = Some("5b0c6f3e-9a41-4d2b-8f7e-2c1d0a9b8e7f".into());
        seen.metadata.resource_version = Some("48213".into());
        let annotations = seen.metadata.annotations.as_mut().unwrap();
        annotations.insert(crate::core::seal::SEAL_ANNOTATION.into(), "x".repeat(43));
        let cache = cache();
        cache.apply(&watcher::Event::Apply(seen.clone()));
        let key = ObjectRef::new("payments-api").within("sample-namespace");
        assert_eq!(cache.get(&key), Some(Kept::Whole(seen.clone())));
        let storage = cache.lock();
        let stored = &storage.secrets[&key_of(&key)];
        let json = JsonSecrets::split(seen).unwrap().0;
        assert!(
            stored.json.len() * 3 < json.len(),
            "{} of {}",
            stored.json.len(),
            json.len()
        );
    }

    fn token(name: &str, version: &str) -> TokenObject {
        let mut token = ApiToken::new(name, crate::api::ApiTokenSpec::default());
        token.metadata.namespace = Some("ns".into());
        token.metadata.resource_version = Some(version.into());
        token.into()
    }

    fn token_version(cache: &TokenCache, name: &str) -> Option<String> {
        let cached = cache.get(&format!("ns/{name}"))?;
        cached.resource_version().map(Into::into)
    }

    #[test]
    fn the_token_cache_follows_the_same_rule() {
        let cache = TokenCache::tokens();
        let key = ObjectRef::new("t").within("ns");
        cache.apply(&watcher::Event::Apply(token("t", "1")));
        cache.advance(&key, Some("1"), watcher::Event::Apply(token("t", "2")));
        assert_eq!(token_version(&cache, "t").as_deref(), Some("2"));
        cache.advance(&key, Some("1"), watcher::Event::Apply(token("t", "9")));
        assert_eq!(token_version(&cache, "t").as_deref(), Some("2"));
        cache.advance(&key, Some("2"), watcher::Event::Delete(token("t", "2")));
        assert!(cache.keys().is_empty());
    }

    #[test]
    fn a_token_relist_is_served_only_once_complete_and_keeps_the_shared_key() {
        let cache = TokenCache::tokens();
        cache.apply(&watcher::Event::Apply(token("a", "1")));
        cache.apply(&watcher::Event::Apply(token("b", "1")));
        let held = cache.get("ns/a").unwrap().key().clone();
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(token("a", "5")));
        // Mid-relist: the previous complete view.
        assert_eq!(token_version(&cache, "a").as_deref(), Some("1"));
        assert!(cache.contains("ns/b"));
        cache.apply(&watcher::Event::InitDone);
        assert_eq!(token_version(&cache, "a").as_deref(), Some("5"));
        assert!(!cache.contains("ns/b"), "deleted while the watch was down");
        assert_eq!(cache.keys().len(), 1);
        // The same string still names it: wake-ups and the queue that hold it share it.
        assert!(Arc::ptr_eq(cache.get("ns/a").unwrap().key(), &held));
        let a = cache.get("ns/a").unwrap();
        assert_eq!((a.namespace(), a.name()), ("ns", "a"));
        assert_eq!(
            a.token().unwrap().metadata.resource_version.as_deref(),
            Some("5")
        );
    }
}
