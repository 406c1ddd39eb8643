//! Reading one object: ranged GETs of up to `READ_AHEAD` bytes from where the reader stands, so that
//! a seek costs nothing until the next read and sequential reading (restore, verify) needs one
//! request per few MiB.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use azure_storage_blob::models::BlobClientDownloadOptions;

use super::Inner;

const READ_AHEAD: usize = 4 << 20;

pub struct AzureReader {
    inner: Arc<Inner>,
    name: String,
    size: u64,
    position: u64,
    buffer: Vec<u8>,
    /// Where `buffer` starts in the object.
    buffer_start: u64,
}

impl AzureReader {
    pub(super) fn new(inner: Arc<Inner>, name: String, size: u64) -> Self {
        AzureReader { inner, name, size, position: 0, buffer: Vec::new(), buffer_start: 0 }
    }

    fn fill(&mut self) -> io::Result<()> {
        let length = (self.size - self.position).min(READ_AHEAD as u64) as usize;
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.resize(length, 0);
        let (blob, start) = (self.inner.blob(&self.name), self.position);
        let fetched = self.inner.run(async move {
            let options = BlobClientDownloadOptions {
                range: Some((start..start + length as u64).into()),
                parallel: std::num::NonZero::new(1),
                partition_size: std::num::NonZero::new(length.max(1)),
                ..Default::default()
            };
            let result = blob.download_into(&mut buffer, Some(options)).await;
            (buffer, result)
        });
        let (mut buffer, result) = fetched;
        let result = result.map_err(|e| {
            let error = self.inner.failure("reading an object", &self.inner.location_of(&self.name), e);
            io::Error::other(error.to_string())
        })?;
        if result.len != length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: {} bytes came for a range of {length}", self.inner.location_of(&self.name), result.len),
            ));
        }
        buffer.truncate(result.len);
        self.buffer = buffer;
        self.buffer_start = start;
        Ok(())
    }
}

impl Read for AzureReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.size || out.is_empty() {
            return Ok(0);
        }
        let buffered = self.buffer_start..self.buffer_start + self.buffer.len() as u64;
        if !buffered.contains(&self.position) {
            self.fill()?;
        }
        let at = (self.position - self.buffer_start) as usize;
        let n = out.len().min(self.buffer.len() - at);
        out[..n].copy_from_slice(&self.buffer[at..at + n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for AzureReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the object"))?;
        Ok(self.position)
    }
}
