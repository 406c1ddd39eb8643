//! The standard streams of a process in a container (a helper's attach stream, an exec's) or here, turned into
//! blocking `Read` and `Write` for the data path's threads. Docker multiplexes stdout and stderr on one
//! connection: stdout flows on through a bounded channel, stderr is kept as a tail for messages.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bollard::container::LogOutput;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Keep the tail of a process's stderr for error messages, not all of it.
pub const STDERR_TAIL: usize = 16 << 10;

/// The last [`STDERR_TAIL`] bytes a process wrote to stderr.
pub type StderrTail = Arc<Mutex<String>>;

/// Splits an attached output stream: stdout into the returned reader (which ends where the stream
/// does), stderr to `on_stderr`. Runs on the current tokio runtime.
pub fn demux<S>(mut output: Pin<Box<S>>, mut on_stderr: impl FnMut(&[u8]) + Send + 'static) -> ChannelReader
where
    S: Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send + ?Sized + 'static,
{
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    tokio::spawn(async move {
        while let Some(item) = output.next().await {
            let piece = match item {
                Ok(LogOutput::StdErr { message }) => {
                    on_stderr(&message);
                    continue;
                }
                Ok(other) => Ok(other.into_bytes()),
                // A broken stream must not read as the process's end: the reader gets the error.
                Err(e) => Err(io::Error::other(format!("the engine's stream broke: {e}"))),
            };
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                break;
            }
        }
    });
    ChannelReader { rx, current: Bytes::new() }
}

/// A local process's stdout as the same blocking reader.
pub fn read_async(mut output: impl tokio::io::AsyncRead + Send + Unpin + 'static) -> ChannelReader {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    tokio::spawn(async move {
        loop {
            let mut piece = bytes::BytesMut::with_capacity(256 << 10);
            let piece = match output.read_buf(&mut piece).await {
                Ok(0) => return,
                Ok(_) => Ok(piece.freeze()),
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    ChannelReader { rx, current: Bytes::new() }
}

/// Appends to a stderr tail, dropping its oldest bytes beyond [`STDERR_TAIL`].
pub fn append_tail(stderr: &StderrTail, message: &[u8]) {
    let mut tail = stderr.lock().expect("stderr buffer");
    tail.push_str(&String::from_utf8_lossy(message));
    if tail.len() > STDERR_TAIL {
        let cut = tail.len() - STDERR_TAIL;
        let cut = (cut..tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
        tail.drain(..cut);
    }
}

/// A blocking writer into an attached stdin; dropping it (after a flush) closes the process's input.
pub fn feed(mut input: Pin<Box<dyn AsyncWrite + Send>>) -> ChannelWriter {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if input.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = input.flush().await;
        let _ = input.shutdown().await;
    });
    ChannelWriter { tx, buf: Vec::with_capacity(WRITE_BATCH) }
}

/// Blocking `Read` over an attached stdout.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.current = piece?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl ChannelReader {
    /// Reads and drops the rest on a thread of its own, so that a process whose output nobody wants
    /// never blocks on a full pipe (and so stops reading its input); joining waits for its end.
    pub fn drain_beside(mut self) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let _ = io::copy(&mut self, &mut io::sink());
        })
    }
}

/// Blocking `Write` into an attached stdin, batching small writes.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const WRITE_BATCH: usize = 256 << 10;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_BATCH)));
        self.tx.blocking_send(batch).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the process stopped reading its input"))
    }
}
