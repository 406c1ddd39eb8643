//! The agent side of a helper container: `stackvault agent read ROOT` streams a tree to the sidecar,
//! `stackvault agent write ROOT [--replace]` applies one from it, `stackvault agent relay FIFO` passes a
//! dump on. With `--connect SOCKET --token T` it
//! talks over a socket in the exchange directory (docker::exchange), else over stdin/stdout. It builds
//! no HTTP client and needs nothing but the kernel, so the static binary runs alone in a one-file image.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::source::wire::{EventReader, EventWriter};
use crate::source::exclude::Rules;
use crate::source::{apply, walk, SourceError, Stamp};

/// Where the sidecar listens, and the token that proves this agent is the helper it started.
pub struct Link<'a> {
    pub socket: &'a Path,
    pub token: &'a str,
}

/// Reads the stamps of the files the engine already has along the walk, and streams the tree at `root`, sending
/// unchanged files as `Reused` and leaving out what `rules` exclude (without content on a dry run). On failure the stream carries an error frame, so the reader learns why
/// rather than seeing a truncated stream.
pub fn read(root: &Path, rules: &Rules, read_content: bool, link: Option<Link>) -> Result<(), SourceError> {
    let (input, output) = channel(link)?;
    // Read one at a time, along the walk, so that the agent never holds them all. A stream that breaks
    // off only means the rest is read, not reused.
    let mut input = EventReader::new(BufReader::new(input));
    let mut stamps = walk::WalkMerge::new(std::iter::from_fn(move || input.next_stamp().ok().flatten()).fuse(), |s: &(Vec<u8>, Stamp)| &s.0);
    let mut out = EventWriter::new(BufWriter::with_capacity(1 << 20, output));
    let options = walk::WalkOptions { rules, read_content };
    let result = walk::walk(root, &mut |path| stamps.lookup(path).map(|s| s.1), &options, &mut |event| out.write(&event).map_err(SourceError::Stream));
    match result {
        Ok(()) => out.flush().map_err(SourceError::Stream),
        Err(e) => {
            let _ = out.write_error(&e.to_string()).and_then(|_| out.flush());
            Err(e)
        }
    }
}

/// Relays what is written into the FIFO at `fifo` to the sidecar, unchanged: a database dump that its
/// container writes into a FIFO in a volume this helper mounts reaches the sidecar without passing
/// through the engine's exec stream (docs/ARCHITECTURE.md, "Dumps by exec"). Ends when the writer does.
pub fn relay(fifo: &Path, link: Option<Link>) -> Result<(), SourceError> {
    let (_, mut output) = channel(link)?;
    let mut input = std::fs::File::open(fifo).map_err(|e| SourceError::io(fifo.display(), e))?;
    std::io::copy(&mut input, &mut output).map_err(SourceError::Stream)?;
    output.flush().map_err(SourceError::Stream)
}

/// The last line of a successful `write`'s report, after its warnings.
pub const WRITE_DONE: &str = "restored";

/// Applies the tree it receives to `root`, then sends its report back: one `warning: …` line per
/// warning and a final `restored N entries, B bytes` line. The sidecar takes that line, not the exit
/// status, as success, so it need not wait for the container's teardown (which syncs the filesystem).
pub fn write(root: &Path, replace: bool, link: Option<Link>) -> Result<(), SourceError> {
    let (input, mut output) = channel(link)?;
    let mut input = EventReader::new(BufReader::with_capacity(1 << 20, input));
    let report = apply::apply(root, &mut input, replace)?;
    let mut text = String::new();
    for warning in &report.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text.push_str(&format!("{WRITE_DONE} {} entries, {} bytes\n", report.entries, report.bytes));
    output.write_all(text.as_bytes()).and_then(|()| output.flush()).map_err(SourceError::Stream)
}

/// The agent's input and output: a socket's two directions, or stdin and stdout.
type Channel = (Box<dyn Read + Send>, Box<dyn Write + Send>);

fn channel(link: Option<Link>) -> Result<Channel, SourceError> {
    match link {
        Some(Link { socket, token }) => {
            let mut stream = UnixStream::connect(socket).map_err(|e| SourceError::io(format!("connecting to {}", socket.display()), e))?;
            stream.write_all(format!("{token}\n").as_bytes()).map_err(SourceError::Stream)?;
            crate::source::wire::widen_send_buffer(&stream);
            let input = stream.try_clone().map_err(SourceError::Stream)?;
            Ok((Box::new(input), Box::new(stream)))
        }
        None => {
            let stdin = std::io::stdin().as_fd().try_clone_to_owned().map_err(SourceError::Stream)?;
            let stdout = std::io::stdout().as_fd().try_clone_to_owned().map_err(SourceError::Stream)?;
            Ok((Box::new(std::fs::File::from(stdin)), Box::new(std::fs::File::from(stdout))))
        }
    }
}
