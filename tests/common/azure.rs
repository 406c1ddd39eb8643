//! Azure test plumbing: Azurite (npm, installed by .ci/setup) on a loopback port of its own per test,
//! with a data directory that survives a restart; account SAS tokens signed as "Create an account SAS"
//! specifies (string-to-sign of versions 2015-04-05 to 2020-08-04), independently of stackvault's
//! own code; and the REST test double (tests/azure_double.py) for what Azurite does not implement.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process that prints a line when it listens; killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    /// Returns the server and the line that said it listens.
    fn start(command: &mut Command, ready: &str) -> (Server, String) {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("starting {command:?}: {e} (run .ci/setup)"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted = ready.to_string();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.contains(&wanted) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{command:?} did not print {ready:?} within 30 s"));
        (Server { child }, line)
    }

    fn stop(&mut self, signal: libc::c_int) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL);
    }
}

pub struct Azurite {
    pub port: u16,
    pub data: PathBuf,
    /// The server's certificate and key, for HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
    server: Option<Server>,
}

impl Azurite {
    pub fn start(data: &Path) -> Azurite {
        let mut azurite = Azurite { port: free_port(), data: data.to_path_buf(), tls: None, server: None };
        azurite.launch();
        azurite
    }

    /// Azurite over HTTPS with a certificate for 127.0.0.1 signed by a CA of the test's own; returns
    /// the CA certificate's path (for SSL_CERT_FILE).
    pub fn start_tls(data: &Path) -> (Azurite, PathBuf) {
        let dir = data.with_extension("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| super::ok(Command::new("openssl").current_dir(&dir).args(args).stderr(Stdio::null()));
        openssl(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=stackvault-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
        openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]);
        std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
        openssl(&["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext"]);
        let mut azurite = Azurite { port: free_port(), data: data.to_path_buf(), tls: Some((dir.join("leaf.pem"), dir.join("leaf.key"))), server: None };
        azurite.launch();
        (azurite, dir.join("ca.pem"))
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.data).unwrap();
        let mut command = Command::new("azurite-blob");
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &self.port.to_string(), "--skipApiVersionCheck", "--loose", "--disableTelemetry"])
            .arg("--location")
            .arg(&self.data);
        if let Some((cert, key)) = &self.tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        self.server = Some(Server::start(&mut command, "successfully listens").0);
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}/{ACCOUNT}", if self.tls.is_some() { "https" } else { "http" }, self.port)
    }

    /// Stops Azurite (SIGTERM: Azurite saves its metadata on the way out; after SIGKILL it can lose
    /// blobs it had acknowledged, a fault of the emulator that a real account does not have).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(libc::SIGTERM);
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn connection_string(&self) -> String {
        format!("DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={};", self.endpoint())
    }

    /// Every byte Azurite keeps on disk (blob data and metadata), to look for plaintext.
    pub fn stored_bytes_contain(&self, needle: &[u8]) -> bool {
        super::files(&self.data).iter().any(|f| std::fs::read(f).map(|b| b.windows(needle.len()).any(|w| w == needle)).unwrap_or(false))
    }
}

/// An account SAS for the blob service, signed with the account key.
pub fn account_sas(permissions: &str, expiry: &str) -> String {
    let (services, types, version, protocol) = ("b", "sco", "2018-11-09", "https,http");
    let to_sign = format!("{ACCOUNT}\n{permissions}\n{services}\n{types}\n\n{expiry}\n\n{protocol}\n{version}\n");
    let key = base64::engine::general_purpose::STANDARD.decode(KEY).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("ss", services)
        .append_pair("srt", types)
        .append_pair("sp", permissions)
        .append_pair("se", expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &signature)
        .finish();
    encoded
}

/// The REST test double (tests/azure_double.py): Azure's immutability and legal-hold operations,
/// which Azurite answers with 501.
pub struct Double {
    pub port: u16,
    _server: Server,
}

impl Double {
    pub fn start(worm: bool) -> Double {
        let mut command = Command::new("python3");
        command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azure_double.py")).args(["--port", "0"]);
        if !worm {
            command.arg("--no-worm");
        }
        let (server, line) = Server::start(&mut command, "listening 127.0.0.1:");
        let port = line.rsplit(':').next().and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("the double said {line:?}"));
        Double { port, _server: server }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    fn hook(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(stream, "{method} /__double/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (_, json) = response.split_once("\r\n\r\n").unwrap_or(("", "null"));
        serde_json::from_str(json.trim()).unwrap_or(serde_json::Value::Null)
    }

    pub fn blobs(&self) -> Vec<serde_json::Value> {
        self.hook("GET", "blobs", None).as_array().cloned().unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.hook("GET", "requests", None).as_array().cloned().unwrap_or_default()
    }

    pub fn reset_log(&self) {
        self.hook("POST", "reset-log", None);
    }

    /// Forces a blob's policy, as if it had been stored long ago with a lock that ends sooner.
    pub fn set_policy(&self, name: &str, until: &str, mode: &str) {
        self.hook("POST", "set-policy", Some(&serde_json::json!({"name": name, "until": until, "mode": mode})));
    }

    pub fn set_legal_hold(&self, name: &str, hold: bool) {
        self.hook("POST", "set-policy", Some(&serde_json::json!({"name": name, "legal_hold": hold})));
    }

    /// A container with version-level immutability, as its owner makes one (through the management
    /// plane, which the double does not model).
    pub fn create_container(&self, name: &str) {
        self.hook("POST", "create-container", Some(&serde_json::json!({"name": name})));
    }
}
