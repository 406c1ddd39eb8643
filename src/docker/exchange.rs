//! Where the sidecar and its helpers meet without dockerd in between: a directory both of them see,
//! holding one unix socket per helper. dockerd's attach stream carries 200–400 MB/s on a small host, a
//! socket several GB/s (shared/DESIGN-NOTES.md §7). A path-bound socket works across network
//! namespaces, so helpers keep `--network none`, and a per-helper token keeps strays out.
//! The directory is, in a container, the sidecar's own volume that holds its cache directory; on the
//! engine's host, a volume of stackvault's own ([`EXCHANGE_VOLUME`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountType, VolumeCreateRequest};
use bollard::Docker;

use super::engine::OwnContainer;

/// The volume that holds the sockets when stackvault runs on the engine's host.
pub const EXCHANGE_VOLUME: &str = "stackvault-exchange";
/// Where a helper sees the exchange's mount.
const HELPER_ROOT: &str = "/run/stackvault";
/// The sockets' folder inside a volume of the sidecar's that also holds other things (its cache).
const SUBDIR: &str = ".stackvault-exchange";

pub struct Exchange {
    /// The sockets' directory as this process sees it.
    local: PathBuf,
    /// What a helper mounts at [`HELPER_ROOT`] to see it.
    source: (MountType, String),
    /// The sockets' directory as a helper sees it.
    helper_dir: String,
}

/// One helper's socket, listening; the file is removed when this is dropped (the connection stays).
pub struct Listening {
    pub listener: tokio::net::UnixListener,
    pub helper_path: String,
    pub token: String,
    local_path: PathBuf,
}

impl Listening {
    pub fn describe(&self) -> String {
        format!("socket {}", self.local_path.display())
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local_path);
    }
}

impl Exchange {
    /// Finds the exchange directory, or says why there is none.
    pub async fn find(docker: &Docker, own: Option<&OwnContainer>, cache_dir: &Path, local_engine: bool) -> Result<Exchange, String> {
        let exchange = match own {
            Some(own) => {
                let holding = own
                    .mounts
                    .iter()
                    .filter(|m| m.rw == Some(true) && matches!(m.typ.as_deref(), Some("volume") | Some("bind")))
                    .filter_map(|m| Some((m, PathBuf::from(m.destination.as_deref()?))))
                    .filter(|(_, dest)| cache_dir.starts_with(dest))
                    .max_by_key(|(_, dest)| dest.as_os_str().len());
                let Some((mount, dest)) = holding else {
                    return Err(format!(
                        "the sidecar's container {} mounts no writable volume holding its cache directory {}; mount one there (see README)",
                        own.id,
                        cache_dir.display()
                    ));
                };
                let source = match mount.typ.as_deref() {
                    Some("volume") => (MountType::VOLUME, mount.name.clone().unwrap_or_default()),
                    _ => (MountType::BIND, mount.source.clone().unwrap_or_default()),
                };
                Exchange { local: dest.join(SUBDIR), source, helper_dir: format!("{HELPER_ROOT}/{SUBDIR}") }
            }
            None if local_engine => {
                let mountpoint = match docker.inspect_volume(EXCHANGE_VOLUME).await {
                    Ok(volume) => volume.mountpoint,
                    Err(_) => {
                        let labels = std::collections::HashMap::from([("stackvault.exchange".to_string(), "true".to_string())]);
                        let request = VolumeCreateRequest { name: Some(EXCHANGE_VOLUME.into()), labels: Some(labels), ..Default::default() };
                        docker.create_volume(request).await.map_err(|e| format!("creating volume {EXCHANGE_VOLUME}: {e}"))?.mountpoint
                    }
                };
                if !Path::new(&mountpoint).is_dir() {
                    return Err(format!("the engine's volume {EXCHANGE_VOLUME} ({mountpoint}) is not visible to this process"));
                }
                Exchange { local: PathBuf::from(mountpoint), source: (MountType::VOLUME, EXCHANGE_VOLUME.into()), helper_dir: HELPER_ROOT.into() }
            }
            None => return Err("the engine is remote: it shares no directory with this process".into()),
        };
        std::fs::create_dir_all(&exchange.local)
            .and_then(|()| std::fs::set_permissions(&exchange.local, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("preparing {}: {e}", exchange.local.display()))?;
        exchange.remove_dead_sockets();
        Ok(exchange)
    }

    pub fn describe(&self) -> String {
        self.local.display().to_string()
    }

    /// The mount that shows a helper the exchange directory.
    pub fn mount(&self) -> Mount {
        Mount {
            typ: Some(self.source.0),
            source: Some(self.source.1.clone()),
            target: Some(HELPER_ROOT.into()),
            read_only: Some(true),
            ..Default::default()
        }
    }

    /// A new socket for one helper, named after this process so that a dead run's can be told apart.
    pub fn listen(&self) -> std::io::Result<Listening> {
        let token = hex::encode(crate::random_bytes::<16>());
        let pid = std::process::id();
        let name = format!("{pid}-{}-{}.sock", crate::process_start(pid).unwrap_or(0), &token[..12]);
        let local_path = self.local.join(&name);
        let listener = tokio::net::UnixListener::bind(&local_path)?;
        let listening = Listening { listener, helper_path: format!("{}/{name}", self.helper_dir), token, local_path };
        std::fs::set_permissions(&listening.local_path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listening)
    }

    /// Sockets of runs that were killed before they could remove theirs.
    fn remove_dead_sockets(&self) {
        let Ok(listing) = std::fs::read_dir(&self.local) else { return };
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".sock") else { continue };
            let mut parts = stem.splitn(3, '-');
            let (Some(Ok(pid)), Some(Ok(start))) = (parts.next().map(str::parse::<u32>), parts.next().map(str::parse::<u64>)) else { continue };
            if crate::process_start(pid) != Some(start) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
