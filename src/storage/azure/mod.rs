//! Azure Blob Storage as the target: one block blob per object, under `<prefix><object path>` in one
//! container. Objects are committed with `If-None-Match: *` (never overwritten) and, in a container
//! with version-level immutability, with a per-blob retention date and mode (and a legal hold where
//! configured) in the same request, so that no object exists unlocked even for a moment. A blob's
//! bytes are staged as blocks, each with its MD5, a few at a time, and become visible only when the
//! block list commits. The SDK is async; this module runs it on a runtime of its own, so that the
//! synchronous storage boundary can be called from any thread.

mod auth;
mod read;
mod write;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode, Transport, Url};
use azure_core::time::OffsetDateTime;
use azure_storage_blob::models::{
    BlobContainerClientGetPropertiesResultHeaders, BlobContainerClientListBlobsOptions, BlobClientGetPropertiesResultHeaders,
    BlobClientSetImmutabilityPolicyOptions, ImmutabilityPolicyMode, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions};
use futures_util::{StreamExt, TryStreamExt};

use super::{Key, ObjectInfo, ObjectKind, ObjectReader, ObjectWriter, Storage, StorageError};
use crate::config::{AzureConfig, Immutability, LockMode};
use auth::{Credential, Signer};

/// Azure accepts per-blob retention of up to this many days.
const MAX_DAYS: u32 = 146_000;
/// Objects up to this size are staged from memory; larger ones spill to a local file first, since a
/// blob's name (the hash of its bytes) is known only once all of them are written.
const MEMORY_SPOOL: usize = 4 << 20;
/// Block size and how many blocks are in flight: memory per upload is about their product.
const BLOCK: usize = 4 << 20;
const BLOCKS_IN_FLIGHT: usize = 4;
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);
/// Lock extensions and other per-object requests in flight.
const REQUESTS_IN_FLIGHT: usize = 16;

pub struct AzureStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken on drop: a runtime must not be dropped inside another's async context.
    runtime: Option<tokio::runtime::Runtime>,
    container: BlobContainerClient,
    blob_options: BlobClientOptions,
    container_url: Url,
    /// "" or a folder ending in '/'.
    prefix: String,
    credential: Credential,
    immutability: Immutability,
    /// Whether the container supports version-level immutability; asked once, when first needed.
    worm: Mutex<Option<bool>>,
    /// The retention date of everything this run commits, fixed when first needed: a run that crosses
    /// midnight locks its manifest no longer than the objects it references.
    run_until: std::sync::OnceLock<SystemTime>,
    spool_dir: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl AzureStorage {
    /// Resolves the credential and builds the clients; sends nothing yet. `spool_dir` holds (unlinked)
    /// temporary copies of objects larger than a few MiB while they upload.
    pub fn open(config: &AzureConfig, spool_dir: &Path) -> Result<Self, StorageError> {
        let refused = |message: String| StorageError::Refused { location: "the Azure target".into(), message };
        let container = config.container.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
            refused("repository.azure.container is not set: name the blob container (STACKVAULT_REPOSITORY_AZURE_CONTAINER)".into())
        })?;
        if !valid_container_name(container) {
            return Err(refused(format!(
                "repository.azure.container {container:?} is not a container name: 3 to 63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit"
            )));
        }
        if !(1..=MAX_DAYS).contains(&config.immutability.days) {
            return Err(refused(format!("repository.azure.immutability.days is {}: it must be between 1 and {MAX_DAYS}", config.immutability.days)));
        }
        let credential = auth::resolve(config).map_err(refused)?;
        // An expired token, or one that cannot even read, is told before any request.
        if let Signer::Sas(sas) = &credential.signer {
            sas.check(&credential.origin, false).map_err(|message| StorageError::Denied { location: "the Azure target".into(), message })?;
        }
        let mut container_url = credential.endpoint.clone();
        container_url.path_segments_mut().map_err(|()| refused("repository.azure.endpoint cannot hold a path".into()))?.pop_if_empty().push(container);
        let prefix = match config.prefix.trim_matches('/') {
            "" => String::new(),
            folder => format!("{folder}/"),
        };

        // TLS by rustls with ring (the HTTP clients of the SDK and of azure_identity use it too).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| refused(format!("cannot set up HTTPS: {e}")))?;
        let mut client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            // Timeouts, 408, 429 and 5xx are retried with exponential backoff and jitter, honouring
            // Retry-After, for `retry_for` in all before a run gives up (and the next one resumes).
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(500),
                max_retries: 30,
                max_total_elapsed: azure_core::time::Duration::try_from(config.retry_for.unwrap_or(DEFAULT_RETRY_FOR)).unwrap_or(azure_core::time::Duration::minutes(2)),
                max_delay: azure_core::time::Duration::seconds(20),
            }),
            ..Default::default()
        };
        // First among the per-try policies, so that it sees what the transport answered.
        client_options.per_try_policies.push(Arc::new(CertificateErrorsAreFinal));
        let token = match &credential.signer {
            Signer::SharedKey(policy) => {
                client_options.per_try_policies.push(policy.clone());
                None
            }
            Signer::Sas(policy) => {
                client_options.per_try_policies.push(policy.clone());
                None
            }
            Signer::Token(token) => Some(token.clone()),
        };
        let sdk_error = |e: azure_core::Error| refused(auth::redact(&e.to_string()));
        let container_client = BlobContainerClient::new(
            container_url.clone(),
            token.clone(),
            Some(BlobContainerClientOptions { client_options: client_options.clone(), ..Default::default() }),
        )
        .map_err(sdk_error)?;
        let blob_options = BlobClientOptions { client_options, ..Default::default() };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stackvault-azure")
            .enable_all()
            .build()
            .map_err(|e| refused(format!("cannot start the upload runtime: {e}")))?;
        Ok(AzureStorage {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                container: container_client,
                blob_options,
                container_url,
                prefix,
                credential,
                immutability: config.immutability.clone(),
                worm: Mutex::new(None),
                run_until: std::sync::OnceLock::new(),
                spool_dir: spool_dir.to_path_buf(),
            }),
        })
    }
}

impl Inner {
    /// Runs a future on this target's runtime and waits for it, from any thread (even one inside
    /// another runtime, where `block_on` would panic).
    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.spawn(async move {
            let _ = done.send(future.await);
        });
        result.recv().expect("the storage runtime finishes what it starts")
    }

    /// Starts a future on this target's runtime without waiting for it.
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.runtime.as_ref().expect("runtime lives until drop").spawn(future);
    }

    fn blob_name(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.path())
    }

    fn blob(&self, name: &str) -> BlobClient {
        let mut url = self.container_url.clone();
        url.path_segments_mut().expect("a base URL").extend(name.split('/'));
        let token = match &self.credential.signer {
            Signer::Token(token) => Some(token.clone()),
            _ => None,
        };
        BlobClient::new(url, token, Some(self.blob_options.clone())).expect("the container URL was checked")
    }

    fn location_of(&self, name: &str) -> String {
        format!("{}/{name}", self.container_url)
    }

    /// Whether the container keeps per-blob immutability; asked of Azure once.
    fn worm(self: &Arc<Self>) -> Result<bool, StorageError> {
        if let Some(known) = *self.worm.lock().expect("worm flag") {
            return Ok(known);
        }
        let inner = self.clone();
        let properties = self.run(async move { inner.container.get_properties(None).await });
        let worm = match properties {
            Ok(response) => response.is_immutable_storage_with_versioning_enabled().ok().flatten().unwrap_or(false),
            Err(e) => return Err(self.failure("reading the container's properties", &self.container_url.to_string(), e)),
        };
        *self.worm.lock().expect("worm flag") = Some(worm);
        Ok(worm)
    }

    /// The retention date and mode for an object committed now, where the container locks objects.
    fn new_lock(self: &Arc<Self>) -> Result<Option<(OffsetDateTime, ImmutabilityPolicyMode)>, StorageError> {
        if !self.worm()? {
            if self.immutability.required {
                return Err(self.not_worm());
            }
            return Ok(None);
        }
        Ok(Some((OffsetDateTime::from(self.run_until()), self.mode())))
    }

    fn run_until(&self) -> SystemTime {
        *self.run_until.get_or_init(|| lock_until(SystemTime::now(), self.immutability.days))
    }

    fn mode(&self) -> ImmutabilityPolicyMode {
        match self.immutability.mode {
            LockMode::Locked => ImmutabilityPolicyMode::Locked,
            LockMode::Unlocked => ImmutabilityPolicyMode::Unlocked,
        }
    }

    fn not_worm(&self) -> StorageError {
        StorageError::Refused {
            location: self.container_url.to_string(),
            message: "the container does not support version-level immutability (Azure does not report x-ms-immutable-storage-with-versioning-enabled: true), so objects could be deleted or changed: enable version-level immutability on the container (it needs blob versioning on the account; README, \"Azure Blob Storage\"), or set repository.azure.immutability.required: false to store without locks (trials only)".into(),
        }
    }

    /// Maps an SDK error to what the user must know: which credential failed and what to fix, what
    /// is missing, or that the target is unreachable (a later run resumes); never a secret.
    fn failure(&self, doing: &str, location: &str, error: azure_core::Error) -> StorageError {
        let location = location.to_string();
        let credential = format!("{} ({})", auth::kind_name(self.credential.kind), self.credential.origin);
        let detail = auth::redact(&causes(&error));
        match error.kind() {
            azure_core::error::ErrorKind::HttpResponse { status, error_code, .. } => {
                let code = error_code.clone().unwrap_or_default();
                match (*status, code.as_str()) {
                    (StatusCode::NotFound, "ContainerNotFound") => StorageError::Refused {
                        location: self.container_url.to_string(),
                        message: format!("the container does not exist in account {}: create it (with version-level immutability) or correct repository.azure.container", self.credential.account),
                    },
                    (StatusCode::NotFound, _) => StorageError::NotFound { location },
                    // Delete Blob on a blob under an unexpired immutability policy or a legal hold.
                    (StatusCode::Conflict, "BlobImmutableDueToPolicy") => StorageError::Locked { location, why: "its immutability policy has not expired".into() },
                    (StatusCode::Conflict, "BlobImmutableDueToLegalHold") => StorageError::Locked { location, why: "it is under a legal hold".into() },
                    (StatusCode::Forbidden, code) if code.starts_with("Authorization") && code.ends_with("Mismatch") => StorageError::Denied {
                        location,
                        message: format!(
                            "{doing}: {credential} is not allowed to do this ({code}): a SAS needs the permissions read, list, create and write (sp=rlcw) on this container, and delete (d) to prune; an identity needs the role \"Storage Blob Data Contributor\" on it, or a custom role with read, write, delete and immutability-policy actions (README, \"Azure Blob Storage\")"
                        ),
                    },
                    // Anything else refused is the credential itself (a wrong or rotated key, an expired
                    // or revoked SAS, a disabled identity), or access to the account closed to it.
                    (StatusCode::Forbidden | StatusCode::Unauthorized, code) => StorageError::Denied {
                        location,
                        message: match &self.credential.signer {
                            Signer::SharedKey(_) => format!(
                                "{doing}: Azure refused the account key of {} from {credential} ({code}): put the account's current key1 or key2 there (keys may have been rotated), and check that the account allows key access from here",
                                self.credential.account
                            ),
                            Signer::Sas(_) => format!(
                                "{doing}: Azure refused the SAS token from {credential} ({code}): it has expired, was revoked, or is for another account or container: issue a new one"
                            ),
                            Signer::Token(_) => format!("{doing}: Azure refused the token of {credential} ({code}): check the identity's tenant, that it is enabled, and its role on the container"),
                        },
                    },
                    (status, _) if status == StatusCode::TooManyRequests || status == StatusCode::RequestTimeout || u16::from(status) >= 500 => {
                        StorageError::Unavailable { location, message: format!("{doing}: Azure kept answering {} {code} after retries; the next run resumes where this one stopped", u16::from(status)) }
                    }
                    (status, _) => StorageError::Refused { location, message: format!("{doing}: Azure answered {} {code}", u16::from(status)) },
                }
            }
            azure_core::error::ErrorKind::Io | azure_core::error::ErrorKind::Connection => StorageError::Unavailable {
                location,
                message: format!("{doing}: cannot reach {} after retries ({detail}); the next run resumes where this one stopped", self.credential.endpoint),
            },
            azure_core::error::ErrorKind::Credential => {
                StorageError::Denied { location, message: format!("{doing}: no token could be had for {credential}: {detail}") }
            }
            _ => StorageError::Refused { location, message: format!("{doing}: {detail}") },
        }
    }

    fn info(&self, key: Key, size: u64, until: Option<OffsetDateTime>, hold: Option<bool>) -> ObjectInfo {
        ObjectInfo { key, size, retain_until: until.map(SystemTime::from), legal_hold: hold.unwrap_or(false) }
    }
}

/// The end of the day (UTC) `days` after `at`: a retention date that reads as a day, not a second.
pub fn lock_until(at: SystemTime, days: u32) -> SystemTime {
    const DAY: u64 = 86_400;
    let seconds = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + u64::from(days) * DAY;
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.div_ceil(DAY) * DAY)
}

/// A TLS certificate that does not verify will not verify on a retry either: the SDK's retry policy
/// retries every connection error, so this turns those into a final error (two minutes of retries
/// otherwise, measured, before the same message).
#[derive(Debug)]
struct CertificateErrorsAreFinal;

#[async_trait::async_trait]
impl azure_core::http::policies::Policy for CertificateErrorsAreFinal {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn azure_core::http::policies::Policy>],
    ) -> azure_core::http::policies::PolicyResult {
        match next[0].send(ctx, request, &next[1..]).await {
            Err(e) if matches!(e.kind(), azure_core::error::ErrorKind::Io | azure_core::error::ErrorKind::Connection) && is_tls_failure(&e) => {
                Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Other,
                    format!(
                        "TLS with the endpoint failed: {}; check repository.azure.endpoint and the CA certificates (the system's, or SSL_CERT_FILE)",
                        auth::redact(&causes(&e))
                    ),
                ))
            }
            other => other,
        }
    }
}

fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // An io::Error's `source` skips the error it wraps: look at that one itself.
        source = match cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    false
}

/// An error with its causes ("retry policy expired: error sending request: invalid peer certificate"):
/// the first line alone rarely says what happened.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Azure's rule for container names ("Naming and referencing containers, blobs, and metadata").
fn valid_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !name.contains("--")
}

fn is_conflict(error: &azure_core::Error) -> bool {
    matches!(error.kind(), azure_core::error::ErrorKind::HttpResponse { status, .. }
        if *status == StatusCode::Conflict || *status == StatusCode::PreconditionFailed)
}

impl Storage for AzureStorage {
    fn location(&self) -> String {
        let prefix = &self.inner.prefix;
        format!("{}{}{}", self.inner.container_url, if prefix.is_empty() { "" } else { "/" }, prefix.trim_end_matches('/'))
    }

    fn create(&self) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(write::AzureWriter::new(self.inner.clone())))
    }

    fn open(&self, key: &Key) -> Result<Box<dyn ObjectReader>, StorageError> {
        let size = self.stat(key)?.ok_or_else(|| StorageError::NotFound { location: self.inner.location_of(&self.inner.blob_name(key)) })?.size;
        Ok(Box::new(read::AzureReader::new(self.inner.clone(), self.inner.blob_name(key), size)))
    }

    fn stat(&self, key: &Key) -> Result<Option<ObjectInfo>, StorageError> {
        let name = self.inner.blob_name(key);
        let blob = self.inner.blob(&name);
        match self.inner.run(async move { blob.get_properties(None).await }) {
            Ok(response) => Ok(Some(self.inner.info(
                key.clone(),
                response.content_length().ok().flatten().unwrap_or(0),
                response.immutability_policy_expires_on().ok().flatten(),
                response.legal_hold().ok().flatten(),
            ))),
            Err(e) => match self.inner.failure("reading an object's properties", &self.inner.location_of(&name), e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        let folder = match kind {
            ObjectKind::Config => return Ok(self.stat(&Key::config())?.into_iter().collect()),
            ObjectKind::Pack => "packs/",
            ObjectKind::Index => "index/",
            ObjectKind::Snapshot => "snapshots/",
            ObjectKind::Prune => "prune/",
        };
        let prefix = format!("{}{folder}", self.inner.prefix);
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.clone()),
            include: Some(vec![ListBlobsIncludeItem::ImmutabilityPolicy, ListBlobsIncludeItem::LegalHold]),
            ..Default::default()
        };
        let inner = self.inner.clone();
        let listed = self.inner.run(async move {
            let mut found = Vec::new();
            let mut pages = inner.container.list_blobs(Some(options))?.into_pages();
            while let Some(page) = pages.try_next().await? {
                for blob in page.into_model()?.blob_items {
                    let (Some(name), Some(properties)) = (blob.name, blob.properties) else { continue };
                    found.push((name, properties));
                }
            }
            Ok::<_, azure_core::Error>(found)
        });
        let listed = listed.map_err(|e| self.inner.failure("listing objects", &self.location(), e))?;
        let mut found: Vec<ObjectInfo> = listed
            .into_iter()
            .filter_map(|(name, properties)| {
                let below = name.strip_prefix(&prefix)?;
                // Packs sit in fan-out folders (packs/ab/<id>); the name is the last part.
                let object = if kind == ObjectKind::Pack { below.rsplit('/').next()? } else { below };
                let key = Key::new(kind, object);
                Some(self.inner.info(key, properties.content_length.unwrap_or(0), properties.immutability_policy_expires_on, properties.legal_hold))
            })
            .collect();
        found.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        Ok(found)
    }

    fn retain(&self, key: &Key, until: SystemTime) -> Result<(), StorageError> {
        let name = self.inner.blob_name(key);
        let inner = self.inner.clone();
        let (blob, mode) = (self.inner.blob(&name), self.inner.mode());
        self.inner
            .run(async move {
                let options = BlobClientSetImmutabilityPolicyOptions { immutability_policy_mode: Some(mode), ..Default::default() };
                blob.set_immutability_policy(&OffsetDateTime::from(until), Some(options)).await.map(|_| ())
            })
            .map_err(|e| inner.failure("extending an object's retention", &inner.location_of(&name), e))
    }

    fn set_legal_hold(&self, key: &Key, hold: bool) -> Result<(), StorageError> {
        let name = self.inner.blob_name(key);
        let blob = self.inner.blob(&name);
        self.inner
            .run(async move { blob.set_legal_hold(hold, None).await.map(|_| ()) })
            .map_err(|e| self.inner.failure("setting a legal hold", &self.inner.location_of(&name), e))
    }

    /// Deletes the blob's current version. With versioning on (which version-level immutability
    /// needs), that version stays as a previous one until the container's lifecycle rule removes it
    /// (README, "Pruning on Azure").
    fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let name = self.inner.blob_name(key);
        let blob = self.inner.blob(&name);
        match self.inner.run(async move { blob.delete(None).await.map(|_| ()) }) {
            Ok(()) => Ok(()),
            Err(e) => match self.inner.failure("deleting an object", &self.inner.location_of(&name), e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn check_writable(&self, init: bool) -> Result<Vec<String>, StorageError> {
        let inner = &self.inner;
        if let Signer::Sas(sas) = &inner.credential.signer {
            sas.check(&inner.credential.origin, true).map_err(|message| StorageError::Denied { location: inner.container_url.to_string(), message })?;
        }
        let mut notes = Vec::new();
        let worm = match inner.worm() {
            Err(StorageError::Refused { .. }) if init && !inner.immutability.required && !self.container_exists()? => {
                let task = inner.clone();
                inner.run(async move { task.container.create(None).await }).map_err(|e| inner.failure("creating the container", &inner.container_url.to_string(), e))?;
                notes.push(format!("{}: created the container", inner.container_url));
                *inner.worm.lock().expect("worm flag") = None;
                inner.worm()?
            }
            other => other?,
        };
        if !worm {
            if inner.immutability.required {
                return Err(inner.not_worm());
            }
            notes.push(format!(
                "{}: the container does not support version-level immutability; objects are stored without retention locks (repository.azure.immutability.required is false)",
                inner.container_url
            ));
        }
        Ok(notes)
    }

    fn lock_until(&self) -> Result<Option<SystemTime>, StorageError> {
        Ok(self.inner.worm()?.then(|| self.inner.run_until()))
    }

    fn holds_legally(&self) -> bool {
        self.inner.immutability.legal_hold
    }

    /// Extends the locks of the objects that need it `extend_ahead_days` past `until`, many requests
    /// at a time: an object's lock is then extended about once a month, not on every night.
    fn protect(&self, objects: &[ObjectInfo], until: SystemTime) -> Result<usize, StorageError> {
        let ahead = until + Duration::from_secs(u64::from(self.inner.immutability.extend_ahead_days) * 86_400);
        let hold = self.inner.immutability.legal_hold;
        let work: Vec<(String, bool, bool)> = objects
            .iter()
            .map(|o| (self.inner.blob_name(&o.key), o.retain_until.is_none_or(|t| t < until), hold && !o.legal_hold))
            .filter(|(_, extend, hold)| *extend || *hold)
            .collect();
        let changed = work.len();
        let inner = self.inner.clone();
        let mode = self.inner.mode();
        self.inner.run(async move {
            futures_util::stream::iter(work)
                .map(|(name, extend, hold)| {
                    let (blob, inner) = (inner.blob(&name), inner.clone());
                    async move {
                        let failed = |e| inner.failure("extending an object's retention", &inner.location_of(&name), e);
                        if extend {
                            let options = BlobClientSetImmutabilityPolicyOptions { immutability_policy_mode: Some(mode), ..Default::default() };
                            blob.set_immutability_policy(&OffsetDateTime::from(ahead), Some(options)).await.map_err(failed)?;
                        }
                        if hold {
                            blob.set_legal_hold(true, None).await.map_err(|e| inner.failure("setting a legal hold", &inner.location_of(&name), e))?;
                        }
                        Ok::<_, StorageError>(())
                    }
                })
                .buffer_unordered(REQUESTS_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await
        })?;
        Ok(changed)
    }

    /// The config is replaced by writing a new version of its blob: version-level immutability keeps
    /// the old version locked and lets the name take a new one.
    fn replace_config(&self, bytes: &[u8]) -> Result<(), StorageError> {
        let name = self.inner.blob_name(&Key::config());
        let lock = self.inner.new_lock()?;
        let inner = self.inner.clone();
        let body = bytes::Bytes::copy_from_slice(bytes);
        self.inner.run(async move { write::upload(&inner, &name, write::Body::Memory(body), lock, false).await }).map(|_| ())
    }
}

impl AzureStorage {
    fn container_exists(&self) -> Result<bool, StorageError> {
        let task = self.inner.clone();
        self.inner.run(async move { task.container.exists().await }).map_err(|e| self.inner.failure("looking for the container", &self.inner.container_url.to_string(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_night_locks_until_the_end_of_the_same_day() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 2 * 3600);
        let later = at + Duration::from_secs(3 * 3600);
        assert_eq!(lock_until(at, 180), lock_until(later, 180));
        assert_eq!(lock_until(at, 180), SystemTime::UNIX_EPOCH + Duration::from_secs(20_181 * 86_400));
    }

    #[test]
    fn container_names_follow_azure_rules() {
        for good in ["backups", "acme-calls-2026", "abc"] {
            assert!(valid_container_name(good), "{good}");
        }
        for bad in ["c1", "Backups", "-backups", "backups-", "back--ups", "back_ups", &"a".repeat(64)] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }
}
