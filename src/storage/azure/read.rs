//! Reading one object: ranged GETs of up to `READ_AHEAD` bytes from where the reader stands, so that
//! a seek costs nothing until the next read and sequential reading (restore, verify) needs one
//! request per few MiB; while one range is being consumed, reading on from its end, the next is
//! already on its way.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc::Receiver;
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
    /// The range after `buffer`, requested while `buffer` is read.
    next: Option<(u64, Receiver<io::Result<Vec<u8>>>)>,
}

impl AzureReader {
    pub(super) fn new(inner: Arc<Inner>, name: String, size: u64) -> Self {
        AzureReader { inner, name, size, position: 0, buffer: Vec::new(), buffer_start: 0, next: None }
    }

    /// Requests `READ_AHEAD` bytes (fewer at the end) from `start`; the answer arrives on the channel.
    fn request(&self, start: u64) -> Receiver<io::Result<Vec<u8>>> {
        let length = (self.size - start).min(READ_AHEAD as u64) as usize;
        let (blob, inner, name) = (self.inner.blob(&self.name), self.inner.clone(), self.name.clone());
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        self.inner.spawn(async move {
            let mut buffer = vec![0u8; length];
            let options = BlobClientDownloadOptions {
                range: Some((start..start + length as u64).into()),
                parallel: std::num::NonZero::new(1),
                partition_size: std::num::NonZero::new(length.max(1)),
                ..Default::default()
            };
            let result = match blob.download_into(&mut buffer, Some(options)).await {
                Ok(got) if got.len == length => Ok(buffer),
                Ok(got) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: {} bytes came for a range of {length}", inner.location_of(&name), got.len),
                )),
                Err(e) => Err(io::Error::other(inner.failure("reading an object", &inner.location_of(&name), e).to_string())),
            };
            let _ = done.send(result);
        });
        answer
    }

    fn fill(&mut self) -> io::Result<()> {
        let sequential = !self.buffer.is_empty() && self.position == self.buffer_start + self.buffer.len() as u64;
        let answer = match self.next.take() {
            Some((start, answer)) if start == self.position => answer,
            _ => self.request(self.position),
        };
        self.buffer = answer.recv().map_err(|_| io::Error::other("the storage runtime stopped"))??;
        self.buffer_start = self.position;
        let following = self.buffer_start + self.buffer.len() as u64;
        if sequential && following < self.size {
            self.next = Some((following, self.request(following)));
        }
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
