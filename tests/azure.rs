//! The Azure Blob target: the engine's round trip against Azurite (the Blob protocol, Shared Key and
//! SAS, for real) with each kind of credential; clear refusals of bad credentials and of a container
//! that cannot lock objects; an Azurite that dies mid-upload. Azurite ignores immutability headers
//! and answers 501 to Set Blob Immutability Policy and Set Blob Legal Hold, so the immutability
//! requests are tested against tests/azure_double.py, a test double written from Azure's REST
//! reference (not from this client): tests/azure_worm.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::azure::*;
use common::*;

const SECRET_VARIABLES: [&str; 4] = ["AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"];

/// A credential as the sidecar meets it: one standard variable.
#[derive(Clone)]
struct Secret {
    variable: &'static str,
    value: String,
}

fn sv(config: &Path, secret: &Secret) -> Command {
    let mut cmd = stackvault(config);
    for v in SECRET_VARIABLES {
        cmd.env_remove(v);
    }
    cmd.env(secret.variable, &secret.value);
    cmd
}

fn shared_key() -> Secret {
    Secret { variable: "AZURE_STORAGE_KEY", value: KEY.into() }
}

/// A compose stack of one container and one fixture volume, backed up into an Azure container.
struct AzureScene {
    project: String,
    volume: String,
    work: PathBuf,
    config: PathBuf,
}

impl AzureScene {
    /// `repository` is the YAML below `repository:\n  azure:\n` (indented four spaces); `extra` more
    /// top-level YAML.
    fn new(prefix: &str, big_mib: u32, small: u32, repository: &str, extra: &str) -> AzureScene {
        let project = unique(prefix);
        let volume = format!("{project}_data");
        let work = scratch(prefix);
        compose_volume(&project, &volume);
        make_fixture(&volume_dir(&volume), big_mib, small);
        stack_container(&project, &volume);
        let config = write_config(
            &work,
            &format!(
                "stack: {project}\ndocker:\n  select:\n    project: {project}\nrepository:\n  azure:\n{repository}cache_dir: {}\nstate_dir: {}\n{extra}",
                work.join("cache").display(),
                work.join("state").display()
            ),
        );
        AzureScene { project, volume, work, config }
    }

    fn destroy(&self) {
        remove_project_containers(&self.project);
        docker(&["volume", "rm", &self.volume]);
    }

    fn cleanup(self) {
        remove_project_containers(&self.project);
        let _ = Command::new("docker").args(["volume", "rm", &self.volume]).output();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The `repository.azure` lines for a container of the emulator that is not WORM-capable.
fn azurite_repository(endpoint: &str, container: &str) -> String {
    format!("    account: {ACCOUNT}\n    container: {container}\n    endpoint: {endpoint}\n    immutability:\n      required: false\n")
}

/// What the newest snapshot says it stored in new packs.
fn stored_bytes(config: &Path, secret: &Secret) -> u64 {
    let listing: serde_json::Value = serde_json::from_str(&ok(sv(config, secret).args(["snapshots", "--json"]))).unwrap();
    listing.as_array().unwrap().last().unwrap()["snapshot"]["summary"]["stored_bytes"].as_u64().unwrap()
}

fn assert_no_secret(output: &std::process::Output, secrets: &[&str]) {
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    for secret in secrets {
        assert!(!all.contains(secret), "a secret appears in the output:\n{all}");
    }
}

/// Backs up, changes one small file, backs up again (which stores a sliver), destroys the stack and
/// restores it, and verifies every byte.
fn round_trip(scene: &AzureScene, secret: &Secret, identity: Option<&Path>) {
    let before = scene.work.join("before.json");
    let mountpoint = volume_dir(&scene.volume);
    let init = run(sv(&scene.config, secret).arg("init"));
    assert!(init.status.success(), "init: {}", text(&init.stderr));
    ok(sv(&scene.config, secret).arg("backup"));
    let first = stored_bytes(&scene.config, secret);
    let small = files(&mountpoint).into_iter().find(|f| f.extension().is_some_and(|e| e == "txt")).expect("the fixture has small text files");
    std::fs::write(&small, b"changed tonight\n").unwrap();
    manifest(&mountpoint, &before);
    let second_run = ok(sv(&scene.config, secret).arg("backup"));
    let second = stored_bytes(&scene.config, secret);
    assert!(second * 100 < first, "the second backup stored {second} bytes, the first {first}: not under 1 %\n{second_run}");

    scene.destroy();
    let mut restore = sv(&scene.config, secret);
    restore.args(["restore", "latest"]);
    let mut verify = sv(&scene.config, secret);
    verify.args(["verify", "--read-data"]);
    if let Some(identity) = identity {
        restore.arg("--identity").arg(identity);
        verify.arg("--identity").arg(identity);
    }
    ok(&mut restore);
    let after = scene.work.join("after.json");
    manifest(&volume_dir(&scene.volume), &after);
    assert_same(&before, &after);
    let verified = ok(&mut verify);
    assert!(verified.contains("2 snapshots checked") && !verified.contains("BROKEN"), "{verified}");
}

#[test]
fn the_engine_round_trip_works_with_a_shared_key_a_sas_and_a_connection_string() {
    let work = scratch("azurite");
    let mut azurite = Azurite::start(&work.join("azurite"));
    let endpoint = azurite.endpoint();

    let scene = AzureScene::new("az-key", 12, 300, &azurite_repository(&endpoint, "key"), "");
    round_trip(&scene, &shared_key(), None);
    scene.cleanup();

    let sas = Secret { variable: "AZURE_STORAGE_SAS_TOKEN", value: account_sas("rwdlac", "2099-01-01T00:00:00Z") };
    let scene = AzureScene::new("az-sas", 12, 300, &azurite_repository(&endpoint, "sas"), "");
    round_trip(&scene, &sas, None);
    // Least privilege for reading: a read-and-list SAS serves snapshots and verify.
    let reader = Secret { variable: "AZURE_STORAGE_SAS_TOKEN", value: account_sas("rl", "2099-01-01T00:00:00Z") };
    assert!(ok(sv(&scene.config, &reader).arg("verify")).contains("2 snapshots checked"));
    scene.cleanup();

    // Encrypted to a recipient: no blob holds known plaintext, names included (an Azurite of its
    // own, so that its whole store is this repository's).
    azurite.stop();
    let mut azurite = Azurite::start(&work.join("azurite-encrypted"));
    let keys = scratch("az-keys");
    let identity = keys.join("identity.txt");
    let recipient = ok(Command::new(env!("CARGO_BIN_EXE_stackvault")).args(["keygen", "--output"]).arg(&identity)).trim().to_string();
    let connection = Secret { variable: "AZURE_STORAGE_CONNECTION_STRING", value: azurite.connection_string() };
    let repository = format!("    container: conn\n    prefix: stacks/conn\n    immutability:\n      required: false\n");
    let scene = AzureScene::new("az-conn", 12, 300, &repository, &format!("encryption:\n  recipients: [\"{recipient}\"]\n"));
    round_trip(&scene, &connection, Some(&identity));
    for needle in [KNOWN_PLAINTEXT.as_bytes(), "résumé".as_bytes(), b"big.bin"] {
        assert!(!azurite.stored_bytes_contain(needle), "Azurite's store holds {:?}", text(needle));
    }
    scene.cleanup();
    azurite.stop();
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&keys);
}

#[test]
fn a_container_that_cannot_lock_objects_is_refused_when_worm_is_required() {
    let work = scratch("az-worm");
    let azurite = Azurite::start(&work.join("azurite"));
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("call.wav"), b"RIFF").unwrap();
    let lenient = write_config(
        &work,
        &format!("stack: w\npaths: [{}]\nrepository:\n  azure:\n{}cache_dir: {}\n", data.display(), azurite_repository(&azurite.endpoint(), "worm"), work.join("cache").display()),
    );
    ok(sv(&lenient, &shared_key()).arg("init"));
    // The same container with the default, `required: true`.
    let strict = write_config(
        &work,
        &format!(
            "stack: w\npaths: [{}]\nrepository:\n  azure:\n    account: {ACCOUNT}\n    container: worm\n    endpoint: {}\ncache_dir: {}\n",
            data.display(),
            azurite.endpoint(),
            work.join("cache").display()
        ),
    );
    let out = run(sv(&strict, &shared_key()).arg("backup"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not support version-level immutability") && stderr.contains("required: false"), "{stderr}");
    assert!(ok(sv(&lenient, &shared_key()).arg("snapshots")).contains("0 snapshots"), "a refused backup stored a snapshot");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_wrong_key_an_expired_sas_and_a_sas_without_write_are_named_and_never_shown() {
    let work = scratch("az-cred");
    let azurite = Azurite::start(&work.join("azurite"));
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("call.wav"), vec![7u8; 100_000]).unwrap();
    let config = write_config(
        &work,
        &format!("stack: c\npaths: [{}]\nrepository:\n  azure:\n{}cache_dir: {}\n", data.display(), azurite_repository(&azurite.endpoint(), "cred"), work.join("cache").display()),
    );
    ok(sv(&config, &shared_key()).arg("init"));

    // Another account's key: valid base64, wrong signature.
    let wrong_key = "c3RhY2t2YXVsdC13cm9uZy1rZXktc3RhY2t2YXVsdC13cm9uZy1rZXktc3RhY2t2YXVsdA==";
    let out = run(sv(&config, &Secret { variable: "AZURE_STORAGE_KEY", value: wrong_key.into() }).arg("backup"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("account key") && stderr.contains("AZURE_STORAGE_KEY") && stderr.contains("key1 or key2"), "{stderr}");
    assert_no_secret(&out, &[wrong_key, KEY]);

    let expired = account_sas("rwdlac", "2020-01-01T00:00:00Z");
    let out = run(sv(&config, &Secret { variable: "AZURE_STORAGE_SAS_TOKEN", value: expired.clone() }).arg("backup"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("SAS token") && stderr.contains("expired at") && stderr.contains("AZURE_STORAGE_SAS_TOKEN"), "{stderr}");
    assert_no_secret(&out, &[&expired, expired.rsplit("sig=").next().unwrap()]);

    let read_only = account_sas("rl", "2099-01-01T00:00:00Z");
    let out = run(sv(&config, &Secret { variable: "AZURE_STORAGE_SAS_TOKEN", value: read_only.clone() }).arg("backup"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("lacks the create, write permissions") && stderr.contains("sp=rlcw"), "{stderr}");
    assert_no_secret(&out, &[read_only.rsplit("sig=").next().unwrap()]);

    // A SAS whose signature Azure rejects: the server's refusal is named the same way.
    let forged = format!("{}AAAA", account_sas("rwdlac", "2099-01-01T00:00:00Z"));
    let out = run(sv(&config, &Secret { variable: "AZURE_STORAGE_SAS_TOKEN", value: forged.clone() }).arg("backup"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refused the SAS token") && stderr.contains("AZURE_STORAGE_SAS_TOKEN"), "{stderr}");
    assert_no_secret(&out, &[forged.rsplit("sig=").next().unwrap()]);
    assert!(ok(sv(&config, &shared_key()).arg("snapshots")).contains("0 snapshots"));
    let _ = std::fs::remove_dir_all(&work);
}

/// Waits until Azurite's store has grown by `bytes` since `from`.
fn until_stored(azurite: &Azurite, from: u64, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while du(&azurite.data) < from + bytes && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_endpoint_that_goes_away_mid_upload_leaves_no_snapshot_referencing_a_missing_blob_and_the_next_run_resumes() {
    let work = scratch("az-kill");
    let mut azurite = Azurite::start(&work.join("azurite"));
    let data = work.join("data");
    std::fs::create_dir_all(data.join("first")).unwrap();
    make_fixture(&data.join("first"), 160, 50);
    let config = write_config(
        &work,
        &format!(
            "stack: k\npaths: [{}]\nrepository:\n  azure:\n{}cache_dir: {}\n",
            data.display(),
            azurite_repository(&azurite.endpoint(), "kill"),
            work.join("cache").display()
        ),
    );
    ok(sv(&config, &shared_key()).arg("init"));
    let piped = || std::process::Stdio::piped();

    // A short outage (Azurite stopped for 3 s mid-upload): the retries carry the run through.
    let backup = sv(&config, &shared_key()).arg("backup").stdout(piped()).stderr(piped()).spawn().unwrap();
    until_stored(&azurite, 0, 40 << 20);
    azurite.stop();
    std::thread::sleep(std::time::Duration::from_secs(3));
    azurite.restart();
    let first = backup.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let verified = ok(sv(&config, &shared_key()).args(["verify", "--read-data"]));
    assert!(verified.contains("1 snapshots checked") && !verified.contains("BROKEN"), "{verified}");

    // A long one (the endpoint stays away past `retry_for`): the run fails saying where and that the
    // next run resumes, and stores no snapshot on the target: the night is staged (exit 3).
    std::fs::create_dir_all(data.join("second")).unwrap();
    make_fixture(&data.join("second"), 160, 50);
    let stored_before = du(&azurite.data);
    let backup = sv(&config, &shared_key()).env("STACKVAULT_REPOSITORY_AZURE_RETRY_FOR", "4s").arg("backup").stdout(piped()).stderr(piped()).spawn().unwrap();
    until_stored(&azurite, stored_before, 60 << 20);
    azurite.stop();
    let failed = backup.wait_with_output().unwrap();
    azurite.restart();
    let stderr = text(&failed.stderr);
    assert_eq!(failed.status.code(), Some(3), "the run did not stage its snapshot with its target gone:\n{}\n{}", text(&failed.stdout), text(&failed.stderr));
    assert!(stderr.contains("cannot reach") && stderr.contains("127.0.0.1") && stderr.contains("resumes"), "{stderr}");
    let verified = ok(sv(&config, &shared_key()).args(["verify", "--read-data"]));
    assert!(verified.contains("1 snapshots checked") && !verified.contains("BROKEN"), "{verified}");

    // The next run uploads the staged night, then backs up: it sends only what the failed one had
    // not, at most a pack (32 MiB) in flight more, and stores nothing new of its own.
    let again = ok(sv(&config, &shared_key()).arg("backup"));
    let status: serde_json::Value = serde_json::from_str(&ok(sv(&config, &shared_key()).args(["status", "--json"]))).unwrap();
    let sent = status["last_success"]["bytes_uploaded"].as_u64().unwrap();
    assert!(sent < (160 - 60 + 32) << 20, "the resumed run sent {sent} bytes of 160 MiB\n{again}");
    assert_eq!(stored_bytes(&config, &shared_key()), 0, "{again}");
    let verified = ok(sv(&config, &shared_key()).args(["verify", "--read-data"]));
    assert!(verified.contains("3 snapshots checked") && !verified.contains("BROKEN"), "{verified}");
    azurite.stop();
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn https_verifies_the_endpoint_against_the_ca_certificates_and_an_unknown_issuer_fails_at_once() {
    let work = scratch("az-tls");
    let (azurite, ca) = Azurite::start_tls(&work.join("azurite"));
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("call.wav"), vec![5u8; 6 << 20]).unwrap();
    let config = write_config(
        &work,
        &format!("stack: t\npaths: [{}]\nrepository:\n  azure:\n{}cache_dir: {}\n", data.display(), azurite_repository(&azurite.endpoint(), "tls"), work.join("cache").display()),
    );
    // The test's CA, as a deployment with its own CA would give it (rustls reads SSL_CERT_FILE).
    ok(sv(&config, &shared_key()).env("SSL_CERT_FILE", &ca).arg("init"));
    ok(sv(&config, &shared_key()).env("SSL_CERT_FILE", &ca).arg("backup"));
    assert!(ok(sv(&config, &shared_key()).env("SSL_CERT_FILE", &ca).args(["verify", "--read-data"])).contains("1 snapshots checked"));
    // Without it the issuer is unknown: no retries for two minutes, a message that says TLS.
    let started = std::time::Instant::now();
    let out = run(sv(&config, &shared_key()).env_remove("SSL_CERT_FILE").arg("backup"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("TLS with the endpoint failed") && stderr.contains("UnknownIssuer") && stderr.contains("SSL_CERT_FILE"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "a certificate failure was retried for {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&work);
}
