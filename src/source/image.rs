//! Container images as sources: the engine's export (`GET /images/{name}/get`, the tar `docker save`
//! writes: layers uncompressed, so that a layer two images or two nights share is stored once) read
//! as a byte stream, and loaded back on restore (`POST /images/load`) from the snapshot's blobs.

use std::io::Read;

use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use tokio::runtime::Handle;

use crate::docker::DockerError;

/// The exported image as a blocking reader, for the archiver's thread.
pub fn export(handle: &Handle, docker: &Docker, image: &str) -> impl Read + Send + 'static {
    let stream = docker.export_image(image).map_err(std::io::Error::other);
    tokio_util::io::SyncIoBridge::new_with_handle(tokio_util::io::StreamReader::new(Box::pin(stream)), handle.clone())
}

/// Loads an image from the pieces `next_piece` yields (`None` at the end), as they come. Returns what
/// the engine said it loaded ("Loaded image: mariadb:11").
pub fn load(
    handle: &Handle,
    docker: &Docker,
    what: &str,
    mut next_piece: impl FnMut() -> Result<Option<Vec<u8>>, crate::Error>,
) -> Result<String, crate::Error> {
    let (pieces, received) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let body = tokio_stream_of(received);
    let options = bollard::query_parameters::ImportImageOptionsBuilder::default().quiet(true).build();
    let docker = docker.clone();
    let loading = handle.spawn(async move {
        let mut said = Vec::new();
        let mut progress = Box::pin(docker.import_image_stream(options, body, None));
        while let Some(info) = progress.next().await {
            let info = info.map_err(DockerError::api("loading an image"))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(DockerError::Agent(format!("the engine refused the image: {error}")));
            }
            said.extend(info.stream.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
        }
        Ok(said.join("; "))
    });
    let sent = (|| -> Result<(), crate::Error> {
        while let Some(piece) = next_piece()? {
            if pieces.blocking_send(Ok(bytes::Bytes::from(piece))).is_err() {
                break; // the engine stopped reading: its answer says why
            }
        }
        Ok(())
    })();
    drop(pieces);
    let loaded = handle.block_on(loading).map_err(|e| crate::Error::source(what, format!("loading stopped: {e}")))?;
    sent?;
    loaded.map_err(|e| crate::Error::source(what, e))
}

fn tokio_stream_of<T: Send + 'static>(mut received: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| received.poll_recv(cx))
}
