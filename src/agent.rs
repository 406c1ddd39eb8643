//! The agent side of a helper container: `stackvault agent read ROOT` streams a tree to stdout,
//! `stackvault agent write ROOT [--replace]` applies one from stdin. It builds no HTTP client and needs
//! nothing but the kernel, so the static binary runs alone in a one-file image.

use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::Path;

use crate::source::wire::{EventReader, EventWriter};
use crate::source::{apply, walk, SourceError};

/// Reads the stamps of the files the engine already has from stdin, then streams the tree at `root`
/// to stdout, sending unchanged files as `Reused`. On failure the stream carries an error frame, so
/// the reader learns why rather than seeing a truncated stream.
pub fn read(root: &Path) -> Result<(), SourceError> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().map_err(SourceError::Stream)?;
    let known = EventReader::new(BufReader::new(std::fs::File::from(stdin))).read_stamps()?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().map_err(SourceError::Stream)?;
    let mut out = EventWriter::new(BufWriter::with_capacity(1 << 20, std::fs::File::from(stdout)));
    let result = walk::walk(root, &|path| known.get(path).copied(), &mut |event| out.write(&event).map_err(SourceError::Stream));
    match result {
        Ok(()) => out.flush().map_err(SourceError::Stream),
        Err(e) => {
            let _ = out.write_error(&e.to_string()).and_then(|_| out.flush());
            Err(e)
        }
    }
}

/// Applies the tree on stdin to `root`; warnings go to stderr, one per line, prefixed `warning:`.
pub fn write(root: &Path, replace: bool) -> Result<(), SourceError> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().map_err(SourceError::Stream)?;
    let mut input = EventReader::new(BufReader::with_capacity(1 << 20, std::fs::File::from(stdin)));
    let report = apply::apply(root, &mut input, replace)?;
    let mut stderr = std::io::stderr().lock();
    for warning in &report.warnings {
        let _ = writeln!(stderr, "warning: {warning}");
    }
    let _ = writeln!(stderr, "restored {} entries, {} bytes", report.entries, report.bytes);
    Ok(())
}
