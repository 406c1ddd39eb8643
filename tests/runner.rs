//! The nightly runner, end to end with the real binary: the daemon on a schedule serving /healthz and
//! /metrics (read by the Prometheus project's own parser, tests/promparse.py), a share that goes away
//! (the night is staged, alerted, uploaded when it is back, or reported lost past its window), runs
//! killed with SIGKILL at random points (to a share and to Azurite), and the run lock.
//! The webhook receiver is a local HTTP server of the test's own: it answers 200 and keeps the bodies.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET on loopback: status code and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response.split_once("\r\n\r\n")?.1.to_string()))
}

/// Every sample of the daemon's /metrics, as the Prometheus client's parser reads them.
fn metrics(port: u16) -> Vec<serde_json::Value> {
    let Some((200, body)) = get(port, "/metrics") else { return Vec::new() };
    let out = run_with_input(Command::new("python3").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promparse.py")), &body);
    assert!(out.status.success(), "the Prometheus parser refused /metrics: {}\n{body}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .and_then(|s| s["value"].as_f64())
}

fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A daemon whose log goes to a file; SIGKILLed if the test ends without stopping it.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: &Path) -> Daemon {
        let file = std::fs::File::create(log).unwrap();
        let child = stackvault(config).arg("daemon").stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Daemon { child: Some(child), log: log.to_path_buf() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; returns the exit code and how long the daemon took to exit.
    fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().unwrap();
        (status.code(), started.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A webhook receiver: answers every POST with 200 and keeps its JSON body.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(json) = serde_json::from_slice(&body) {
                        kept.lock().unwrap().push(json);
                    }
                }
                let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/secret-token", self.port)
    }

    fn kinds(&self) -> Vec<String> {
        self.bodies.lock().unwrap().iter().map(|b| b["kind"].as_str().unwrap_or_default().to_string()).collect()
    }
}

/// A six-field cron expression that fires once a day, `seconds_from_now` from now (UTC).
fn cron_in(seconds_from_now: u64) -> String {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + seconds_from_now;
    let of_day = at % 86_400;
    format!("{} {} {} * * *", of_day % 60, of_day / 60 % 60, of_day / 3600)
}

fn paths_config(work: &Path, data: &Path, repo: &Path, extra: &str) -> PathBuf {
    write_config(
        work,
        &format!("stack: runner\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\ncache_dir: {}\n{extra}", data.display(), repo.display(), work.join("cache").display()),
    )
}

fn small_data(work: &Path) -> PathBuf {
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..20 {
        std::fs::write(data.join(format!("call-{i}.wav")), format!("recording {i} ").repeat(5000)).unwrap();
    }
    data
}

#[test]
fn the_daemon_on_a_five_second_schedule_is_healthy_and_counts_its_runs() {
    let work = scratch("daemon");
    let data = small_data(&work);
    let repo = work.join("repo");
    let port = free_port();
    let config = paths_config(&work, &data, &repo, &format!("schedule:\n  cron: \"*/5 * * * * *\"\nlisten: 127.0.0.1:{port}\nlog_format: json\n"));
    ok(stackvault(&config).arg("init"));
    let mut daemon = Daemon::start(&config, &work.join("daemon.log"));
    let samples = wait_for("a healthy daemon with a successful run", Duration::from_secs(15), || {
        let (code, _) = get(port, "/healthz")?;
        let samples = metrics(port);
        (code == 200 && sample(&samples, "stackvault_runs_total", &[("result", "success"), ("stack", "runner")])? >= 1.0).then_some(samples)
    });
    assert!(sample(&samples, "stackvault_backup_bytes_total", &[("kind", "read")]).unwrap() > 0.0, "{samples:?}");
    assert!(sample(&samples, "stackvault_backup_bytes_total", &[("kind", "new")]).unwrap() > 0.0, "{samples:?}");
    assert!(sample(&samples, "stackvault_backup_bytes_total", &[("kind", "uploaded")]).unwrap() > 0.0, "{samples:?}");
    assert!(sample(&samples, "stackvault_last_success_timestamp_seconds", &[]).unwrap() > 1.7e9, "{samples:?}");
    assert_eq!(sample(&samples, "stackvault_pending_snapshots", &[]), Some(0.0));
    assert_eq!(get(port, "/nothing-here").map(|r| r.0), Some(404));

    let (code, took) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.log());
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
    // One JSON object per line, each with the fields a log collector indexes.
    let log = daemon.log();
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["time", "level", "stack", "run_id", "event", "message"] {
            assert!(event.get(field).is_some(), "{field} missing: {line}");
        }
    }
    assert!(log.contains("\"event\":\"run.success\"") && log.contains("\"bytes_uploaded\""), "{log}");
    ok(stackvault(&config).args(["verify", "--read-data"]));
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn the_daemon_verifies_on_its_own_schedule_and_alerts_a_broken_snapshot() {
    let work = scratch("verify-daemon");
    let data = small_data(&work);
    let repo = work.join("repo");
    let port = free_port();
    let hooks = Receiver::start();
    let config = paths_config(
        &work,
        &data,
        &repo,
        &format!(
            "schedule:\n  cron: \"{}\"\nverify:\n  schedule:\n    cron: \"*/3 * * * * *\"\n  read_data: 100%\nlisten: 127.0.0.1:{port}\nalerts:\n  webhooks:\n    - url: {}\n",
            cron_in(3600),
            hooks.url()
        ),
    );
    ok(stackvault(&config).arg("init"));
    ok(stackvault(&config).arg("backup"));
    let _daemon = Daemon::start(&config, &work.join("daemon.log"));
    let clean = |samples: &[serde_json::Value]| Some((sample(samples, "stackvault_verify_last_timestamp_seconds", &[])? > 1.7e9, sample(samples, "stackvault_verify_broken_snapshots", &[])?));
    wait_for("a clean verification", Duration::from_secs(20), || (clean(&metrics(port))? == (true, 0.0)).then_some(()));
    assert!(hooks.kinds().is_empty(), "a clean verification alerted: {:?}", hooks.kinds());

    // A bit flips in a pack: the next verification reads it back and says so.
    flip_byte(&files(&repo.join("packs"))[0], 100);
    wait_for("a verification that finds the damage", Duration::from_secs(20), || (clean(&metrics(port))?.1 == 1.0).then_some(()));
    let alert = wait_for("its failure alert", Duration::from_secs(10), || hooks.bodies.lock().unwrap().iter().find(|b| b["kind"] == "failure").cloned());
    assert!(alert["summary"].as_str().unwrap().contains("verification found 1 broken"), "{alert}");
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_share_that_goes_away_gets_the_night_staged_then_uploaded_or_reported_lost() {
    let work = scratch("staging");
    let data = small_data(&work);
    let share = work.join("share");
    let away = work.join("share.unmounted");
    std::fs::create_dir_all(&share).unwrap();
    let repo = share.join("repo");
    let receiver = Receiver::start();
    let port = free_port();
    let runner_yaml = |cron: &str, window: &str| {
        format!(
            "schedule:\n  cron: \"{cron}\"\nlisten: 127.0.0.1:{port}\nretry:\n  interval: 1s\n  window: {window}\nalerts:\n  webhooks:\n    - url: {}\n      on: [failure, recovery, lost, success]\n",
            receiver.url()
        )
    };
    let config = paths_config(&work, &data, &repo, &runner_yaml(&cron_in(6), "1d"));
    ok(stackvault(&config).arg("init"));
    ok(stackvault(&config).arg("backup"));
    wait_for("the success alert of the first backup", Duration::from_secs(10), || receiver.kinds().contains(&"success".to_string()).then_some(()));

    // The share is unmounted: the directory is gone.
    std::fs::rename(&share, &away).unwrap();
    std::fs::write(data.join("call-new.wav"), "tonight's recording ".repeat(3000)).unwrap();
    let mut daemon = Daemon::start(&config, &work.join("daemon.log"));
    wait_for("one pending snapshot in /metrics", Duration::from_secs(30), || (sample(&metrics(port), "stackvault_pending_snapshots", &[])? == 1.0).then_some(()));
    wait_for("the failure alert", Duration::from_secs(10), || receiver.kinds().contains(&"failure".to_string()).then_some(()));
    let failure = receiver.bodies.lock().unwrap().iter().find(|b| b["kind"] == "failure").cloned().unwrap();
    assert!(failure["summary"].as_str().unwrap().contains("staged"), "{failure}");
    assert!(!away.join("repo").join("tmp").exists() || std::fs::read_dir(away.join("repo/tmp")).unwrap().count() == 0);

    // The share is back: the next retry uploads the night, manifest last.
    std::fs::rename(&away, &share).unwrap();
    wait_for("no pending snapshot", Duration::from_secs(20), || (sample(&metrics(port), "stackvault_pending_snapshots", &[])? == 0.0).then_some(()));
    wait_for("the recovery alert", Duration::from_secs(10), || receiver.kinds().contains(&"recovery".to_string()).then_some(()));
    assert_eq!(daemon.terminate().0, Some(0), "{}", daemon.log());
    let verified = ok(stackvault(&config).args(["verify", "--read-data"]));
    assert!(verified.contains("2 snapshots checked"), "{verified}");
    let listed = ok(stackvault(&config).args(["snapshots", "--json"]));
    assert!(listed.contains("call-new.wav") || listed.matches("\"id\"").count() == 2, "{listed}");

    // Away again, with a retry window of seconds: a one-shot run stages (exit 3), the daemon gives
    // the snapshot up as lost, `status` lists it, and `push` uploads it by hand.
    std::fs::rename(&share, &away).unwrap();
    let config = paths_config(&work, &data, &repo, &runner_yaml("0 2 * * *", "2s"));
    let staged = run(stackvault(&config).arg("backup"));
    assert_eq!(staged.status.code(), Some(3), "{}", text(&staged.stderr));
    assert!(text(&staged.stderr).contains("is staged in"), "{}", text(&staged.stderr));
    let mut daemon = Daemon::start(&config, &work.join("daemon2.log"));
    wait_for("the lost alert", Duration::from_secs(20), || receiver.kinds().contains(&"lost".to_string()).then_some(()));
    assert_eq!(daemon.terminate().0, Some(0), "{}", daemon.log());
    let status: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["status", "--json"]))).unwrap();
    let pending = status["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{status}");
    assert!(pending[0]["lost"].as_str().unwrap().contains("retry window"), "{status}");
    let id = pending[0]["snapshot"].as_str().unwrap().to_string();
    let shown = ok(stackvault(&config).arg("status"));
    assert!(shown.contains("LOST") && shown.contains(&format!("stackvault push {}", &id[..12])), "{shown}");

    std::fs::rename(&away, &share).unwrap();
    ok(stackvault(&config).args(["push", &id[..12]]));
    let verified = ok(stackvault(&config).args(["verify", "--read-data"]));
    assert!(verified.contains("3 snapshots checked"), "{verified}");
    assert!(ok(stackvault(&config).arg("status")).contains("0 pending snapshots"));
    std::fs::remove_dir_all(&work).unwrap();
}

/// Random files that compress to nothing: a run's bytes on the target are its data.
fn random_data(dir: &Path, files: u32, mib_each: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    let mut buffer = vec![0u8; (mib_each as usize) << 20];
    for i in 0..files {
        urandom.read_exact(&mut buffer).unwrap();
        std::fs::write(dir.join(format!("recording-{i:03}.wav")), &buffer).unwrap();
    }
}

/// A deterministic sequence of kill points (a seeded generator: a failure can be replayed).
fn kill_points(count: usize, clean: Duration) -> Vec<Duration> {
    let mut state: u64 = 0x5eed_cafe;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            clean.mul_f64(0.05 + 0.8 * (state % 10_000) as f64 / 10_000.0)
        })
        .collect()
}

/// Starts a backup, SIGKILLs it after `after`, and waits for it to be gone.
fn backup_killed_after(config: &Path, after: Duration, env: &[(&str, String)]) {
    let mut cmd = stackvault(config);
    cmd.arg("backup").stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn runs_killed_at_twenty_random_points_resume_on_a_share_without_writing_twice() {
    let work = scratch("kill-share");
    let data = work.join("data");
    // A killed run wastes the packs it had in flight (on a share: the one being filled, one sealed
    // and one being made durable, up to 3 x 32 MiB in tmp/): a gigabyte keeps that under a tenth.
    random_data(&data, 128, 8);
    // A clean run's bytes and time, in a repository of its own.
    let clean_repo = work.join("clean");
    let clean_dir = work.join("clean-config");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let clean_config = paths_config(&clean_dir, &data, &clean_repo, "");
    ok(stackvault(&clean_config).arg("init"));
    let started = Instant::now();
    ok(stackvault(&clean_config).arg("backup"));
    let clean_time = started.elapsed();
    let clean_bytes = du(&clean_repo);

    let mut killed_runs = 0;
    for (trial, point) in kill_points(20, clean_time).into_iter().enumerate() {
        let dir = work.join(format!("trial-{trial}"));
        std::fs::create_dir_all(&dir).unwrap();
        let repo = dir.join("repo");
        let config = paths_config(&dir, &data, &repo, "");
        ok(stackvault(&config).arg("init"));
        backup_killed_after(&config, point, &[]);
        // Killed before its manifest (one killed after it finished is a complete run).
        killed_runs += (std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0) == 0) as u32;
        // Everything written counts: what the killed run left (its partial pack in tmp/ included)
        // and what the next run adds.
        ok(stackvault(&config).arg("backup"));
        let written = du(&repo);
        assert!(
            written as f64 <= 1.1 * clean_bytes as f64,
            "trial {trial} (killed after {point:?}): {written} bytes written, a clean run writes {clean_bytes}"
        );
        let mut verify = stackvault(&config);
        verify.arg("verify");
        if trial % 5 == 4 {
            verify.arg("--read-data");
        }
        ok(&mut verify);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(killed_runs >= 15, "only {killed_runs} of 20 runs were killed before their manifest");
    std::fs::remove_dir_all(&work).unwrap();
}

/// A loopback TCP relay that counts the bytes clients send through it: what reaches the target.
struct CountingRelay {
    port: u16,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl CountingRelay {
    fn start(upstream: u16) -> CountingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let counter = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (mut client_read, mut server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 1 << 16];
                    while let Ok(n) = client_read.read(&mut buffer) {
                        if n == 0 || server_write.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = server_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_read, mut client_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_read, &mut client_write);
                    let _ = client_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingRelay { port, sent }
    }

    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn runs_killed_at_twenty_random_points_resume_on_azurite_without_uploading_twice() {
    let work = scratch("kill-azure");
    let data = work.join("data");
    random_data(&data, 48, 8);
    let azurite = common::azure::Azurite::start(&work.join("azurite"));
    let relay = CountingRelay::start(azurite.port);
    let key = [("AZURE_STORAGE_KEY", common::azure::KEY.to_string())];
    let config_for = |dir: &Path, container: &str| {
        std::fs::create_dir_all(dir).unwrap();
        write_config(
            dir,
            &format!(
                "stack: runner\npaths: [{}]\nrepository:\n  azure:\n    account: {}\n    container: {container}\n    endpoint: http://127.0.0.1:{}/{}\n    immutability:\n      required: false\ncache_dir: {}\n",
                data.display(),
                common::azure::ACCOUNT,
                relay.port,
                common::azure::ACCOUNT,
                dir.join("cache").display()
            ),
        )
    };
    let sv = |config: &Path| {
        let mut cmd = stackvault(config);
        cmd.env("AZURE_STORAGE_KEY", common::azure::KEY);
        cmd
    };
    let clean = config_for(&work.join("clean"), "clean");
    ok(sv(&clean).arg("init"));
    let before = relay.sent();
    let started = Instant::now();
    ok(sv(&clean).arg("backup"));
    let clean_time = started.elapsed();
    let clean_bytes = relay.sent() - before;

    let mut killed_runs = 0;
    for (trial, point) in kill_points(20, clean_time).into_iter().enumerate() {
        let config = config_for(&work.join(format!("trial-{trial}")), &format!("trial{trial}"));
        ok(sv(&config).arg("init"));
        let before = relay.sent();
        backup_killed_after(&config, point, &key);
        let sent_killed = relay.sent() - before;
        let listed = ok(sv(&config).args(["snapshots", "--json"]));
        killed_runs += (listed.matches("\"id\"").count() == 0) as u32;
        let before_final = relay.sent();
        ok(sv(&config).arg("backup"));
        let sent = sent_killed + (relay.sent() - before_final);
        assert!(sent as f64 <= 1.1 * clean_bytes as f64, "trial {trial} (killed after {point:?}): {sent} bytes sent, a clean run sends {clean_bytes}");
        let mut verify = sv(&config);
        verify.arg("verify");
        if trial % 5 == 4 {
            verify.arg("--read-data");
        }
        ok(&mut verify);
        std::fs::remove_dir_all(work.join(format!("trial-{trial}"))).unwrap();
    }
    assert!(killed_runs >= 15, "only {killed_runs} of 20 runs were killed before their manifest");
    drop(azurite);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_second_run_is_refused_with_the_holder_and_a_killed_holder_is_taken_over() {
    let scene = Scene::new("lock", 500, 20, "");
    let lock = scene.work.join("state").join("lock");
    let mut first = stackvault(&scene.config).arg("backup").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the first run's lock", Duration::from_secs(20), || lock.exists().then_some(()));
    let second = run(stackvault(&scene.config).arg("backup"));
    assert_eq!(second.status.code(), Some(4), "{}", text(&second.stderr));
    let said = text(&second.stderr);
    assert!(said.contains(&format!("locked by {}/{} since", hostname(), first.id())), "{said}");
    // Killed while its helper streams the volume.
    wait_for("the first run's helper", Duration::from_secs(20), || (!helpers_left(&scene.volume).is_empty()).then_some(()));
    first.kill().unwrap();
    first.wait().unwrap();
    let third = run(stackvault(&scene.config).arg("backup"));
    assert!(third.status.success(), "{}", text(&third.stderr));
    assert!(text(&third.stderr).contains("took over the lock of"), "{}", text(&third.stderr));
    assert!(helpers_remaining(&scene.volume).is_empty(), "helpers left: {:?}", helpers_left(&scene.volume));
    assert!(!lock.exists(), "the lock outlived its run");
    ok(stackvault(&scene.config).arg("verify"));
    scene.cleanup();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

#[test]
fn the_daemon_drills_on_its_own_schedule_and_alerts_a_failed_drill() {
    let work = scratch("drill-daemon");
    let project = unique("svdd");
    let volume = format!("{project}_files");
    compose_volume(&project, &volume);
    std::fs::write(volume_dir(&volume).join("proof"), "restored\n").unwrap();
    let app = format!("{project}-app-1");
    docker(&[
        "run", "-d", "--name", &app, "--network", "none", "--label", &format!("com.docker.compose.project={project}"),
        "--label", "com.docker.compose.service=app", "--label", "stackvault.drill-check=grep -q restored /data/proof",
        "-v", &format!("{volume}:/data"), TEST_IMAGE, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let port = free_port();
    let hooks = Receiver::start();
    let body = format!(
        "{}cache_dir: {}\nschedule:\n  cron: \"{}\"\nverify:\n  drill:\n    cron: \"*/4 * * * * *\"\nlisten: 127.0.0.1:{port}\nalerts:\n  webhooks:\n    - url: {}\n",
        stack_yaml(&project, &work.join("repo")),
        work.join("cache").display(),
        cron_in(3600),
        hooks.url()
    );
    let config = write_config(&work, &body);
    ok(stackvault(&config).arg("init"));
    ok(stackvault(&config).arg("backup"));
    let mut daemon = Daemon::start(&config, &work.join("daemon.log"));
    let drilled = |samples: &[serde_json::Value]| Some((sample(samples, "stackvault_drill_last_timestamp_seconds", &[])?, sample(samples, "stackvault_drill_passed", &[])?));
    wait_for("a drill that passes", Duration::from_secs(60), || (drilled(&metrics(port))?.1 == 1.0).then_some(()));
    assert!(hooks.kinds().is_empty(), "a drill that passed alerted: {:?}\n{}", hooks.kinds(), daemon.log());
    assert!(daemon.log().contains("drill.success"), "{}", daemon.log());

    // The app's data no longer holds what its check wants: the next night's snapshot fails its drill.
    std::fs::remove_file(volume_dir(&volume).join("proof")).unwrap();
    ok(stackvault(&config).arg("backup"));
    wait_for("a drill that fails", Duration::from_secs(60), || (drilled(&metrics(port))?.1 == 0.0).then_some(()));
    let alert = wait_for("its failure alert", Duration::from_secs(10), || hooks.bodies.lock().unwrap().iter().find(|b| b["kind"] == "failure").cloned());
    let summary = alert["summary"].as_str().unwrap();
    assert!(summary.contains("the drill of snapshot") && summary.contains(&format!("drill-check of {app}")), "{alert}");

    // Stopped (SIGTERM), maybe mid-drill: nothing of a drill stays on the engine.
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.log());
    assert_eq!(drill_leftovers(), "", "a drill's objects were left\n{}", daemon.log());
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &app]), "true", "the original runs on");
    remove_project_containers(&project);
    let _ = Command::new("docker").args(["volume", "rm", &volume]).output();
    std::fs::remove_dir_all(&work).unwrap();
}
