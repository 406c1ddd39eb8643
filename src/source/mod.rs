//! Sources: where snapshot contents come from. A file tree (a volume, a bind mount, a host path) reaches
//! the engine as a stream of [`event::Event`]s, produced in-process by [`walk`] or by an agent in a helper
//! container over its stdout ([`wire`]); restore replays the same events into [`apply`]. A database
//! dump is a byte stream, read by exec in its server's container ([`dump`]) and archived as one file;
//! so are container images ([`image`]) and the stack's definition ([`stream`]).

pub mod apply;
pub mod dump;
pub mod event;
pub mod exclude;
pub mod image;
pub mod stream;
pub mod walk;
pub mod wire;

use std::sync::mpsc::{Receiver, SyncSender};

pub use event::{EntryKind, Event, Meta, Stamp};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("reading the tree stream: {0}")]
    Stream(std::io::Error),
    #[error("malformed tree stream: {0}")]
    Malformed(String),
    #[error("agent reported: {0}")]
    Agent(String),
    #[error("refusing unsafe name {name:?} in {context}: names must not be empty, '.', '..' or contain '/' or NUL")]
    UnsafeName { name: String, context: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Dump(String),
}

impl SourceError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        SourceError::Io { path: path.to_string(), source }
    }
}

/// Anything that yields a tree as events, pulled one at a time so that memory stays bounded.
pub trait EventSource: Send {
    fn next_event(&mut self) -> Result<Event, SourceError>;
}

/// Events produced on another thread (the local walker), handed over through a bounded channel in
/// batches: one hand-over per event would cost more in thread switches than a small file's work.
pub struct ChannelSource {
    rx: Receiver<Result<Vec<Event>, SourceError>>,
    batch: std::vec::IntoIter<Event>,
}

/// A batch is handed over once it holds this many events, or this many bytes of content.
const BATCH_EVENTS: usize = 256;
const BATCH_BYTES: usize = 1 << 20;

impl ChannelSource {
    pub fn new(rx: Receiver<Result<Vec<Event>, SourceError>>) -> Self {
        ChannelSource { rx, batch: Vec::new().into_iter() }
    }
}

/// The producing side of a [`ChannelSource`].
pub struct ChannelSink {
    tx: SyncSender<Result<Vec<Event>, SourceError>>,
    batch: Vec<Event>,
    batch_bytes: usize,
}

impl ChannelSink {
    pub fn new(tx: SyncSender<Result<Vec<Event>, SourceError>>) -> Self {
        ChannelSink { tx, batch: Vec::with_capacity(BATCH_EVENTS), batch_bytes: 0 }
    }

    pub fn send(&mut self, event: Event) -> Result<(), SourceError> {
        if let Event::Data(piece) = &event {
            self.batch_bytes += piece.len();
        }
        let full = event == Event::End || self.batch_bytes >= BATCH_BYTES || self.batch.len() + 1 >= BATCH_EVENTS;
        self.batch.push(event);
        if full {
            self.batch_bytes = 0;
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_EVENTS));
            self.tx.send(Ok(batch)).map_err(|_| SourceError::Refused("the archiver stopped".into()))?;
        }
        Ok(())
    }

    /// Hands over the producer's failure, after what it produced before it.
    pub fn fail(mut self, error: SourceError) {
        let batch = std::mem::take(&mut self.batch);
        let _ = self.tx.send(Ok(batch));
        let _ = self.tx.send(Err(error));
    }
}

impl EventSource for ChannelSource {
    fn next_event(&mut self) -> Result<Event, SourceError> {
        loop {
            if let Some(event) = self.batch.next() {
                return Ok(event);
            }
            match self.rx.recv() {
                Ok(Ok(batch)) => self.batch = batch.into_iter(),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(SourceError::Malformed("the producer stopped before the end of the tree".into())),
            }
        }
    }
}
