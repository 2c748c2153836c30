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
//! few fields read of every token beside it ([`CachedTokens`]), the Secret cache keeps JSON and
//! drops the data of Secrets that are not tokenmint's ([`JsonSecrets`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::verifier::ApiTokenVerifier;
use crate::api::{ApiToken, GROUP};
use crate::core::token::secret::Packed;
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

impl SecretCache {
    /// An empty Secret cache.
    pub fn json() -> Self {
        Following::new(JsonSecrets::default())
    }

    /// The Secret at `key`, as last seen.
    pub fn get(&self, key: &ObjectRef<Secret>) -> Option<Secret> {
        self.lock().get(key)
    }

    /// The resourceVersion of the Secret at `key`, without decoding it: whoever derived something
    /// from a Secret can tell whether it is still the one they read.
    pub fn resource_version(&self, key: &ObjectRef<Secret>) -> Option<String> {
        let storage = self.lock();
        let version = &storage.secrets.get(&key_of(key))?.resource_version;
        version.as_deref().map(Into::into)
    }
}

impl Default for SecretCache {
    fn default() -> Self {
        SecretCache::json()
    }
}

/// Secrets as JSON, with a relist swapped in only when complete (as a reflector does).
#[derive(Default)]
pub struct JsonSecrets {
    secrets: HashMap<Key, StoredSecret>,
    /// A relist in progress.
    relisting: Option<HashMap<Key, StoredSecret>>,
}

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
}

impl JsonSecrets {
    fn key(secret: &Secret) -> Key {
        meta_key(&secret.metadata)
    }

    /// Only a Secret controlled by an ApiToken or an ApiTokenVerifier keeps its data: any other Secret that carries our label
    /// (anyone may set it) is kept as metadata, so nobody can grow the operator's memory with large
    /// Secrets, and a foreign Secret's data is never held.
    fn stored(secret: &Secret) -> Option<StoredSecret> {
        let controlled = secret.metadata.owner_references.iter().flatten().any(|o| {
            o.controller == Some(true)
                && (o.kind == ApiToken::kind(&()) || o.kind == ApiTokenVerifier::kind(&()))
                && o.api_version.starts_with(GROUP)
        });
        let kept = if controlled {
            secret.clone()
        } else {
            Secret {
                metadata: secret.metadata.clone(),
                type_: secret.type_.clone(),
                ..Secret::default()
            }
        };
        let (json, packed) = Self::split(kept)?;
        Some(StoredSecret {
            resource_version: secret.metadata.resource_version.as_deref().map(Into::into),
            json: dictionary().pack(&json),
            packed,
        })
    }

    /// `secret` as JSON without its credential keys, and those keys packed.
    fn split(mut secret: Secret) -> Option<(Vec<u8>, Packed)> {
        let packed = secret.data.as_mut().map(Packed::take).unwrap_or_default();
        Some((serde_json::to_vec(&secret).ok()?, packed))
    }

    fn get(&self, key: &ObjectRef<Secret>) -> Option<Secret> {
        let stored = self.secrets.get(&key_of(key))?;
        let mut secret: Secret =
            serde_json::from_slice(&dictionary().unpack(&stored.json)?).ok()?;
        if stored.packed != Packed::default() {
            stored.packed.restore(secret.data.get_or_insert_default());
        }
        Some(secret)
    }
}

impl Storage<Secret> for JsonSecrets {
    fn apply(&mut self, event: &watcher::Event<Secret>) {
        match event {
            watcher::Event::Apply(secret) => match Self::stored(secret) {
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
                if let Some(stored) = Self::stored(secret) {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use std::collections::BTreeMap;

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
        cache.get(&key(name))?.metadata.resource_version
    }

    #[test]
    fn a_relist_is_served_only_once_complete_and_drops_what_is_gone() {
        let cache = SecretCache::json();
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
        let cache = SecretCache::json();
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
        let cache = SecretCache::json();
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
        let cache = SecretCache::json();
        cache.apply(&watcher::Event::Apply(secret("mine", "1", true)));
        cache.apply(&watcher::Event::Apply(secret("ballast", "1", false)));
        assert!(cache.get(&key("mine")).unwrap().data.is_some());
        let ballast = cache.get(&key("ballast")).unwrap();
        assert!(ballast.data.is_none());
        assert_eq!(ballast.metadata.resource_version.as_deref(), Some("1"));
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
        let cache = SecretCache::json();
        cache.apply(&watcher::Event::Apply(seen.clone()));
        assert_eq!(cache.get(&key("t")), Some(seen.clone()));
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
        seen.metadata.uid = Some("5b0c6f3e-9a41-4d2b-8f7e-2c1d0a9b8e7f".into());
        seen.metadata.resource_version = Some("48213".into());
        let annotations = seen.metadata.annotations.as_mut().unwrap();
        annotations.insert(crate::core::seal::SEAL_ANNOTATION.into(), "x".repeat(43));
        let cache = SecretCache::json();
        cache.apply(&watcher::Event::Apply(seen.clone()));
        let key = ObjectRef::new("payments-api").within("sample-namespace");
        assert_eq!(cache.get(&key), Some(seen.clone()));
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
