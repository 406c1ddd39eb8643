//! Writing one object: its bytes are kept in memory up to a few MiB, beyond that in an unlinked file in
//! the spool directory (the blob's name, the hash of all its bytes, is known only at commit), then
//! staged as blocks with their MD5, a few at a time, and committed by a block list that carries the
//! retention lock and `If-None-Match: *`. Nothing is visible under the name until that commit.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use azure_core::http::{Etag, RequestContent};
use azure_core::time::OffsetDateTime;
use azure_storage_blob::models::{BlockBlobClientCommitBlockListOptions, BlockBlobClientStageBlockOptions, BlockLookupList, ImmutabilityPolicyMode};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::{is_conflict, Inner, BLOCK, BLOCKS_IN_FLIGHT, MEMORY_SPOOL};
use crate::storage::{Commit, Key, ObjectWriter, StorageError};

static SPOOL_SEQUENCE: AtomicU64 = AtomicU64::new(0);

pub struct AzureWriter {
    inner: Arc<Inner>,
    memory: Vec<u8>,
    spool: Option<File>,
    len: u64,
}

impl AzureWriter {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        AzureWriter { inner, memory: Vec::new(), spool: None, len: 0 }
    }

    /// A file that vanishes with the process, whatever way it ends: it is unlinked at once.
    fn open_spool(&self) -> io::Result<File> {
        let dir = &self.inner.spool_dir;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("upload-{}-{}", std::process::id(), SPOOL_SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }
}

impl Write for AzureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.spool.is_none() && self.memory.len() + buf.len() > MEMORY_SPOOL {
            let mut file = self.open_spool().map_err(|e| io::Error::new(e.kind(), format!("spool directory {}: {e}", self.inner.spool_dir.display())))?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.spool = Some(file);
        }
        match &mut self.spool {
            Some(file) => file.write_all(buf)?,
            None => self.memory.extend_from_slice(buf),
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for AzureWriter {
    fn commit(self: Box<Self>, key: &Key) -> Result<Commit, StorageError> {
        let AzureWriter { inner, memory, spool, len } = *self;
        let name = inner.blob_name(key);
        let lock = inner.new_lock()?;
        let body = match spool {
            Some(file) => Body::File { file: Arc::new(file), len },
            None => Body::Memory(Bytes::from(memory)),
        };
        let task = inner.clone();
        inner.run(async move { upload(&task, &name, body, lock, true).await })
    }
}

/// An object's bytes, whole in memory or in the spool file.
#[derive(Clone)]
pub enum Body {
    Memory(Bytes),
    File { file: Arc<File>, len: u64 },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Memory(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    async fn block(&self, start: u64, end: u64) -> io::Result<Bytes> {
        match self {
            Body::Memory(bytes) => Ok(bytes.slice(start as usize..end as usize)),
            Body::File { file, .. } => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    let mut block = vec![0u8; (end - start) as usize];
                    file.read_exact_at(&mut block, start).map(|()| Bytes::from(block))
                })
                .await
                .map_err(io::Error::other)?
            }
        }
    }
}

/// Stages `body` as blocks and commits them under `name`; `exclusive` commits only if no blob of
/// that name exists (every object but the config, which `migrate` replaces). An existing blob of the
/// same size is the same object (names derive from content): `AlreadyPresent`.
pub async fn upload(
    inner: &Arc<Inner>,
    name: &str,
    body: Body,
    lock: Option<(OffsetDateTime, ImmutabilityPolicyMode)>,
    exclusive: bool,
) -> Result<Commit, StorageError> {
    let location = inner.location_of(name);
    let client = Arc::new(inner.blob(name).block_blob_client());
    let len = body.len();
    let blocks = len.div_ceil(BLOCK as u64);
    // Block ids must have one length within a blob.
    let block_id = |i: u64| format!("{i:08}").into_bytes();
    let staged = futures_util::stream::iter(0..blocks)
        .map(|i| {
            let (client, body, location, id) = (client.clone(), body.clone(), location.clone(), block_id(i));
            async move {
                let start = i * BLOCK as u64;
                let bytes = body.block(start, (start + BLOCK as u64).min(len)).await.map_err(|e| StorageError::from_io(&location, e))?;
                let size = bytes.len() as u64;
                let options = BlockBlobClientStageBlockOptions { transactional_content_md5: Some(Md5::digest(&bytes).to_vec()), ..Default::default() };
                client.stage_block(&id, size, bytes.into(), Some(options)).await.map_err(Staging::Sdk)?;
                crate::storage::count_sent(size);
                Ok::<_, Staging>(())
            }
        })
        .buffer_unordered(BLOCKS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await;
    let committed = match staged {
        Ok(_) => {
            let options = BlockBlobClientCommitBlockListOptions {
                if_none_match: exclusive.then(|| Etag::from("*")),
                immutability_policy_expiry: lock.map(|(until, _)| until),
                immutability_policy_mode: lock.map(|(_, mode)| mode),
                legal_hold: (lock.is_some() && inner.immutability.legal_hold).then_some(true),
                ..Default::default()
            };
            let list = BlockLookupList { latest: Some((0..blocks).map(block_id).collect()), ..Default::default() };
            let content = RequestContent::try_from(list).map_err(|e| StorageError::Refused { location: location.clone(), message: e.to_string() })?;
            client.commit_block_list(content, Some(options)).await.map(|_| ()).map_err(Staging::Sdk)
        }
        Err(e) => Err(e),
    };
    match committed {
        Ok(()) => Ok(Commit::Created),
        Err(Staging::Sdk(e)) if is_conflict(&e) => {
            // Written before (by a run whose answer was lost, or whose commit this retry repeats), or
            // locked under this name: the same bytes if the same size.
            let existing = inner.blob(name).get_properties(None).await.map_err(|e| inner.failure("reading an object's properties", &location, e))?;
            use azure_storage_blob::models::BlobClientGetPropertiesResultHeaders;
            match existing.content_length().ok().flatten() {
                Some(size) if size == len => Ok(Commit::AlreadyPresent),
                size => Err(StorageError::Refused {
                    location,
                    message: format!(
                        "a blob of {} bytes already holds this content-derived name, where {len} bytes were to be stored: the repository was changed by something else; run `stackvault verify`",
                        size.unwrap_or(0)
                    ),
                }),
            }
        }
        Err(Staging::Sdk(e)) => Err(inner.failure("uploading an object", &location, e)),
        Err(Staging::Storage(e)) => Err(e),
    }
}

/// A failure while staging or committing: the SDK's (a conflict is looked at) or ours.
enum Staging {
    Sdk(azure_core::Error),
    Storage(StorageError),
}

impl From<StorageError> for Staging {
    fn from(e: StorageError) -> Self {
        Staging::Storage(e)
    }
}
