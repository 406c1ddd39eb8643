//! Sources: where snapshot contents come from. A file tree (a volume, a bind mount, a host path) reaches
//! the engine as a stream of [`event::Event`]s, produced in-process by [`walk`] or by an agent in a helper
//! container over its stdout ([`wire`]); restore replays the same events into [`apply`].

pub mod apply;
pub mod event;
pub mod exclude;
pub mod walk;
pub mod wire;

use std::sync::mpsc::Receiver;

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

/// Events produced on another thread (the local walker), handed over through a bounded channel.
pub struct ChannelSource(pub Receiver<Result<Event, SourceError>>);

impl EventSource for ChannelSource {
    fn next_event(&mut self) -> Result<Event, SourceError> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(SourceError::Malformed("the producer stopped before the end of the tree".into())))
    }
}
