//! The `stackvault` command line: parse, call the library, print. Exit status 0 on success, 1 on any
//! failure (including a verify that found damage), 2 on bad usage, 3 when a backup's snapshot was
//! staged (the target could not be written), 4 when another run holds the state directory, 130/143
//! when interrupted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use stackvault::config::Config;
use stackvault::repo::crypt::{self, Identities};
use stackvault::restore::RestoreOptions;
use stackvault::verify::ReadData;
use stackvault::runner::lock::{LockError, RunLock};
use stackvault::runner::{Outcome, Runner};

#[derive(Parser)]
#[command(name = "stackvault", version, about = "Deduplicated, encrypted, WORM-first backups of Docker Compose stacks")]
struct Cli {
    /// Configuration file [default: /etc/stackvault/stackvault.yaml when it exists]
    #[arg(short, long, global = true, env = "STACKVAULT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository in the configured target (a directory, or an Azure container)
    Init,
    /// Back up the selected containers' volumes and bind mounts, and the configured paths
    Backup {
        /// Walk every source's metadata and show what a backup would read, reuse and leave out;
        /// reads no file content and writes nothing
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print JSON
        #[arg(long, requires = "dry_run")]
        json: bool,
        /// When another run holds the state directory, wait up to this long (e.g. 10m) for it
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Check the configuration, the target (read, write, immutability), the Docker engine, every
    /// selected container and database server, and show what a backup would take; store nothing
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Run backups on the schedule, retry pending snapshots, serve /healthz and /metrics on `listen`
    Daemon,
    /// Show the last success and failure, the next run, pending snapshots, staging use, the lock holder
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Upload a pending snapshot now, also one past its retry window (reported lost)
    Push {
        /// Its id, or a unique prefix (stackvault status lists them)
        snapshot: String,
    },
    /// Exit 0 when the daemon on `listen` reports healthy (for a container HEALTHCHECK)
    Healthcheck,
    /// List the snapshots in the repository
    Snapshots {
        /// Print JSON (one array of {id, snapshot}) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// What the repository holds and costs: per stack its snapshots, sources, growth per night and
    /// lock; stored bytes and the deduplication ratio
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Forget the snapshots the keep rules no longer want (per stack) and delete the packs no snapshot
    /// references, never one that is locked or held: marked first, deleted by a run after the grace
    /// period (README, "Retention")
    Prune {
        #[command(flatten)]
        retention: Retention,
    },
    /// Forget the snapshots the keep rules no longer want, per stack; with --prune, as `prune`
    Forget {
        #[command(flatten)]
        retention: Retention,
        /// Also delete the packs no snapshot references
        #[arg(long)]
        prune: bool,
    },
    /// Restore a snapshot: volumes and bind mounts through Docker, databases into their running
    /// servers, paths in place
    Restore {
        /// Snapshot id (or a unique prefix of it), or `latest`
        snapshot: String,
        /// age identity file, for an encrypted repository
        #[arg(long, env = "STACKVAULT_IDENTITY")]
        identity: Option<PathBuf>,
        /// Replace the contents of destinations that are not empty
        #[arg(long)]
        force: bool,
        /// Restore every source as a directory below DIR instead of to its origin
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Restore only this: `db:NAME` (a database, or a compose service or container whose dumps
        /// are all restored), `volume:NAME`, or `container:NAME` (re-created from the stack's
        /// definition); may be repeated
        #[arg(long, value_name = "WHAT")]
        only: Vec<String>,
        /// The Docker engine to restore the stack onto (unix:///… or tcp://…) [default: docker.host]
        #[arg(long, value_name = "URL")]
        docker_host: Option<String>,
        /// Print what the restore would create, load and start, in which order, and what exists already;
        /// change nothing
        #[arg(long)]
        dry_run: bool,
        /// Restore the stack under this compose project name, beside the original (names, labels,
        /// volumes and networks renamed; bind mounts moved below state_dir/restored/NEW)
        #[arg(long, value_name = "NEW")]
        project: Option<String>,
        /// Stop and remove containers of the same names first, and overwrite their volumes
        #[arg(long)]
        replace: bool,
    },
    /// Check that every snapshot's objects are present and intact
    Verify {
        /// Also read referenced packs back and check their hashes (and, with --identity, every blob):
        /// all of them, or N% of them, a share that rotates from run to run so that every pack is
        /// read within 100/N runs
        #[arg(long, value_name = "N%", num_args = 0..=1, require_equals = true, default_missing_value = "100%", value_parser = stackvault::config::parse_percent)]
        read_data: Option<u32>,
        /// Print JSON: per snapshot its status, objects, bytes, earliest lock expiry and problems
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML audit report (what was checked, when, the evidence) to FILE
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// age identity file, to check inside encrypted packs and trees
        #[arg(long, env = "STACKVAULT_IDENTITY")]
        identity: Option<PathBuf>,
        /// Also restore a snapshot (the latest, or SNAPSHOT) into throwaway containers, volumes and
        /// internal networks on the local engine, check its databases' rows against those recorded
        /// at backup and each container's stackvault.drill-check command, and remove it all
        #[arg(long, value_name = "SNAPSHOT", num_args = 0..=1, require_equals = true, default_missing_value = "latest")]
        drill: Option<String>,
    },
    /// Move the repository to the newest format version (docs/FORMAT.md, "Versions"); what is stored
    /// stays as it is, later backups write the new version
    Migrate,
    /// Create an age identity; prints its recipient (the public key for encryption.recipients)
    Keygen {
        /// Where to write the identity (mode 0600); it must not exist yet [default: print it]
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run the demo: a small stack in local containers, backed up to a folder, removed, restored, checked
    Demo {
        /// Folder for the demo's configuration and repository
        #[arg(long, default_value = "stackvault-demo")]
        dir: PathBuf,
    },
    /// Inside helper containers only: the agent's side of the tree protocol
    #[command(hide = true)]
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
}

#[derive(Subcommand)]
enum AgentAction {
    Read {
        root: PathBuf,
        /// Exclusion rules, JSON (a list of {prefix, patterns, origin})
        #[arg(long)]
        rules: Option<String>,
        #[arg(long)]
        exclude_caches: bool,
        /// Metadata only: announce the files a backup would read, without reading them
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        link: AgentLink,
    },
    Write {
        root: PathBuf,
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        link: AgentLink,
    },
    Relay {
        fifo: PathBuf,
        #[command(flatten)]
        link: AgentLink,
    },
}

/// Keep rules: any given replace the config's `prune:` rules.
#[derive(clap::Args)]
struct Retention {
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Every snapshot within this long of the stack's newest, e.g. 30d
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_within: Option<std::time::Duration>,
    /// How long marked packs wait before a run deletes them [default: prune.grace, or 24h]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    grace: Option<std::time::Duration>,
    /// Only this stack's snapshots
    #[arg(long)]
    stack: Option<String>,
    /// Print what would be forgotten, marked and deleted; change nothing
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

impl Retention {
    fn options(&self, config: &Config, forget_only: bool) -> Result<stackvault::prune::PruneOptions> {
        let given = stackvault::config::PruneConfig {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            grace: None,
        };
        let rules = if given.keeps_nothing_stated() { config.prune.clone() } else { given };
        let policy = stackvault::config::PruneConfig { grace: self.grace.or(config.prune.grace), ..rules };
        let zone = config.schedule.timezone.as_deref().unwrap_or("UTC");
        let zone = jiff::tz::TimeZone::get(zone).with_context(|| format!("schedule.timezone {zone:?}"))?;
        Ok(stackvault::prune::PruneOptions { policy, zone, stack: self.stack.clone(), dry_run: self.dry_run, forget_only })
    }
}

#[derive(clap::Args)]
struct AgentLink {
    /// The sidecar's socket; without it the agent uses stdin and stdout
    #[arg(long, requires = "token")]
    connect: Option<PathBuf>,
    #[arg(long)]
    token: Option<String>,
}

impl AgentLink {
    fn link(&self) -> Option<stackvault::agent::Link<'_>> {
        Some(stackvault::agent::Link { socket: self.connect.as_deref()?, token: self.token.as_deref()? })
    }
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own arena and keeps freed large buffers there:
    // uploading 570 MiB peaked at 129 MiB RSS (74 MiB with one arena, 59 MiB with a fixed mmap
    // threshold, which cost 15 % in page faults). Two arenas keep the buffers few and reused.
    // SAFETY: called before any other thread exists; mallopt only sets a malloc parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let cli = Cli::parse();
    if let Command::Agent { action } = &cli.command {
        // No runtime, no configuration: the agent only moves a tree through a pipe.
        let result = match action {
            AgentAction::Read { root, rules, exclude_caches, dry_run, link } => {
                let sets: Vec<stackvault::source::exclude::RuleSet> = match rules.as_deref().map(serde_json::from_str).transpose() {
                    Ok(sets) => sets.unwrap_or_default(),
                    Err(e) => {
                        eprintln!("stackvault agent: --rules: {e}");
                        return ExitCode::from(2);
                    }
                };
                match stackvault::source::exclude::Rules::new(&sets, *exclude_caches) {
                    Ok(rules) => stackvault::agent::read(root, &rules, !dry_run, link.link()),
                    Err(e) => Err(stackvault::source::SourceError::Refused(e)),
                }
            }
            AgentAction::Write { root, replace, link } => stackvault::agent::write(root, *replace, link.link()),
            AgentAction::Relay { fifo, link } => stackvault::agent::relay(fifo, link.link()),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stackvault agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Init => {
            let config = Config::load_for_init(config_path)?;
            if let Some(path) = config.example_destination(config_path) {
                Config::write_example(&path)?;
                println!("wrote an example configuration to {}: set the stack, its selection and the target, then run `stackvault init` again", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            let (repo, notes) = stackvault::init_repository(&config)?;
            for note in &notes {
                eprintln!("note: {note}");
            }
            let encryption = if repo.config.encryption.is_some() { "encrypted to the configured recipients" } else { "not encrypted" };
            println!("created repository {} at {} ({encryption})", repo.config.id, repo.storage.location());
        }
        Command::Prune { retention } => return prune(config_path, &retention, false).await,
        Command::Forget { retention, prune: also_prune } => return prune(config_path, &retention, !also_prune).await,
        Command::Stats { json } => {
            let config = Config::load(config_path)?;
            let repo = stackvault::open_repository(&config)?;
            let stats = tokio::task::spawn_blocking(move || stackvault::stats::stats(&repo)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{} stored for {} of snapshots: deduplication {:.1}x", bytes(stats.stored_bytes), bytes(stats.logical_bytes), stats.dedup_ratio);
            for (name, stack) in &stats.stacks {
                let locked = stack.locked_until.as_ref().map(|t| format!("; its data is locked until {t}")).unwrap_or_default();
                println!("stack {name}: {} snapshots, the latest {}{locked}", stack.snapshots, stack.latest);
                for (source, size) in &stack.sources {
                    println!("  {source}: {}", bytes(*size));
                }
                let recent = &stack.nights[stack.nights.len().saturating_sub(7)..];
                let average = recent.iter().map(|(_, b)| b).sum::<u64>() / recent.len().max(1) as u64;
                let shown: Vec<String> = recent.iter().map(|(time, added)| format!("{} +{}", time.get(..10).unwrap_or(time), bytes(*added))).collect();
                println!("  growth, the last {} runs (new packs): {}; {} a run on average", recent.len(), shown.join(", "), bytes(average));
            }
        }
        Command::Check { json } => {
            let config = Config::load(config_path)?;
            let report = interruptible(&config, stackvault::check::check(&config)).await?;
            let passed = report.passed();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let origin = if config.origin.is_empty() { "from the environment".to_string() } else { config.origin.clone() };
                println!("{:<5} {:<13} {origin}", "ok", "configuration");
                for finding in &report.findings {
                    println!("{:<5} {:<13} {}", if finding.ok { "ok" } else { "FAIL" }, finding.part, finding.detail);
                }
                if let Some(dry) = &report.would_take {
                    print_dry_run(dry);
                    let (files, read) = dry.sources.iter().fold((0, 0), |(f, b), s| (f + s.files_to_read, b + s.bytes_to_read));
                    println!("a backup would read {files} files, {}, from {} sources (the rest is unchanged)", bytes(read), dry.sources.len());
                }
                println!("{}", if passed { "check passed; nothing was stored" } else { "check FAILED; nothing was stored" });
            }
            return Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Backup { dry_run: true, json, .. } => {
            let config = Config::load(config_path)?;
            let dry = interruptible(&config, stackvault::backup::dry_run(&config)).await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&dry)?);
                return Ok(ExitCode::SUCCESS);
            }
            print_dry_run(&dry);
            println!("dry run: nothing was read but metadata, nothing was written");
        }
        Command::Backup { wait, .. } => {
            let config = Config::load(config_path)?;
            let Some((lock, runner)) = take_lock(&config, "backup", wait.unwrap_or_default()).await? else { return Ok(ExitCode::from(EXIT_LOCKED)) };
            // A daemon in the same container (`docker compose exec stackvault stackvault backup`)
            // holds `listen` already: its endpoints are not worth failing this backup over.
            let server = match config.listen {
                Some(address) => match stackvault::runner::listen(address, runner.metrics.clone()).await {
                    Ok(server) => Some(server),
                    Err(e) => {
                        eprintln!("warning: {e}; this run serves no /healthz or /metrics");
                        None
                    }
                },
                None => None,
            };
            let progress = Progress::start();
            let outcome = interruptible(&config, runner.run(&stackvault::runner::run_id())).await;
            let (sent, seconds) = progress.stop().await;
            runner.flush_alerts(std::time::Duration::from_secs(30)).await;
            server.inspect(|s| s.abort());
            drop(lock);
            let (outcome, staged) = match outcome?? {
                Outcome::Stored(outcome) => (outcome, None),
                Outcome::Staged { outcome, reason, dir } => (outcome, Some((reason, dir))),
            };
            print_backup(&outcome);
            match staged {
                None => println!("sent {} to the target ({}/s)", bytes(sent), bytes((sent as f64 / seconds.max(0.001)) as u64)),
                Some((reason, dir)) => {
                    eprintln!("error: the target could not be written: {reason}");
                    eprintln!("snapshot {} is staged in {}: it is uploaded by the next run or `stackvault daemon` (`stackvault status` lists it)", outcome.id, dir.display());
                    return Ok(ExitCode::from(EXIT_STAGED));
                }
            }
        }
        Command::Daemon => {
            let config = Config::load(config_path)?;
            stackvault::runner::daemon::run(config).await?;
        }
        Command::Status { json } => {
            let config = Config::load(config_path)?;
            status(&config, json)?;
        }
        Command::Push { snapshot } => {
            let config = Config::load(config_path)?;
            let Some((lock, runner)) = take_lock(&config, "push", std::time::Duration::ZERO).await? else { return Ok(ExitCode::from(EXIT_LOCKED)) };
            let pending = runner.staging().find(&snapshot).map_err(anyhow::Error::msg)?;
            let run_id = stackvault::runner::run_id();
            let sent = interruptible(&config, runner.push(&pending)).await??;
            runner.pushed(&run_id, &pending, sent);
            runner.flush_alerts(std::time::Duration::from_secs(30)).await;
            drop(lock);
            println!("snapshot {} uploaded to the target ({} sent)", pending.id(), bytes(sent));
        }
        Command::Healthcheck => {
            let config = Config::load(config_path)?;
            let Some(mut address) = config.listen else { bail!("listen is not set in {}: the daemon serves no health endpoint", config.origin) };
            if address.ip().is_unspecified() {
                address.set_ip(if address.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
            }
            match stackvault::runner::http::probe(address).await {
                Ok(body) => print!("{body}"),
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Snapshots { json } => {
            let config = Config::load(config_path)?;
            let repo = stackvault::open_repository(&config)?;
            let stackvault::repo::Snapshots { valid: snapshots, unreadable } = repo.snapshots()?;
            for e in &unreadable {
                eprintln!("warning: {e}");
            }
            if json {
                // Whole manifests, one at a time: a repository's can add up to more than memory holds.
                let mut out = std::io::stdout().lock();
                write!(out, "[")?;
                for (i, (id, _)) in snapshots.iter().enumerate() {
                    let snapshot = serde_json::json!({"id": id, "snapshot": repo.snapshot(id)?});
                    write!(out, "{}{}", if i == 0 { "\n" } else { ",\n" }, serde_json::to_string_pretty(&snapshot)?)?;
                }
                writeln!(out, "\n]")?;
            } else {
                println!("{:<12}  {:<24}  {:<12}  {:>7}  {:>10}  {:>10}  {:>10}", "ID", "TIME", "STACK", "SOURCES", "SIZE", "NEW", "EXCLUDED");
                for (id, s) in &snapshots {
                    let short = &id.hex()[..12];
                    let excluded: u64 = s.sources.iter().flat_map(|source| &source.excluded).map(|e| e.bytes).sum();
                    println!(
                        "{short:<12}  {:<24}  {:<12}  {:>7}  {:>10}  {:>10}  {:>10}",
                        s.time,
                        s.stack,
                        s.sources.len(),
                        bytes(s.summary.bytes),
                        bytes(s.summary.new_bytes),
                        bytes(excluded)
                    );
                }
                println!("{} snapshots", snapshots.len());
            }
        }
        Command::Restore { snapshot, identity, force, to, only, docker_host, dry_run, project, replace } => {
            let config = Config::load(config_path)?;
            let only = only.iter().map(|o| o.parse()).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            let steps = RestoreSteps::start();
            let report = Some(steps.reporter());
            let options = RestoreOptions { snapshot, identity, force, to, only, docker_host, dry_run, project, replace, report, isolate: None };
            let outcome = interruptible(&config, stackvault::restore::restore(&config, options)).await;
            steps.stop();
            let outcome = outcome??;
            if let Some(recovery) = outcome.recovery {
                println!("time to recovery: {:.1} s", recovery.as_secs_f64());
            }
            if dry_run {
                println!("plan for snapshot {} (dry run: nothing was changed):", outcome.snapshot);
                for line in &outcome.plan {
                    println!("  {line}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            for line in outcome.plan.iter().filter(|l| l.starts_with("note:")) {
                println!("{line}");
            }
            for (container, state) in &outcome.containers {
                println!("container {container}: {state}");
            }
            for restored in &outcome.restored {
                println!("restored {} -> {}", restored.source, restored.destination);
                for warning in &restored.warnings {
                    println!("  {warning}");
                }
            }
            println!("snapshot {} restored", outcome.snapshot);
        }
        Command::Migrate => {
            let config = Config::load(config_path)?;
            let mut repo = stackvault::open_repository(&config)?;
            match repo.migrate()? {
                None => println!("repository {} already has format version {}: nothing to do", repo.config.id, repo.config.version),
                Some(from) => println!("repository {} moved from format version {from} to {}", repo.config.id, repo.config.version),
            }
        }
        Command::Verify { read_data, json, report: audit, identity, drill } => {
            let config = Config::load(config_path)?;
            let repo = stackvault::open_repository(&config)?;
            let identities = identity.as_deref().map(Identities::load).transpose()?;
            let turns = stackvault::verify::SampleTurn::at(&config.cache_dir().join(&repo.config.id));
            let read = read_data.map_or(ReadData::None, |percent| turns.read_data(percent));
            let context = stackvault::verify::AuditContext {
                repository: repo.config.id.clone(),
                location: repo.storage.location(),
                format_version: repo.config.version,
                encrypted: repo.config.encryption.is_some(),
                read_data: read,
                checked_at: stackvault::now_rfc3339(),
                program: stackvault::program(),
            };
            let (mut report, repo, identities) = tokio::task::spawn_blocking(move || stackvault::verify::verify(&repo, identities.as_ref(), read).map(|report| (report, repo, identities))).await??;
            if let Some(wanted) = &drill {
                let (id, snapshot) = repo.find_snapshot(wanted)?;
                let drilled = stackvault::drill::drill(&config, repo, id, snapshot, identities).await?;
                if let Some(signal_name) = drilled.interrupted {
                    let left = if drilled.left_behind.is_empty() { "everything it had created was removed".to_string() } else { format!("not removed (the next drill removes it): {}", drilled.left_behind.join("; ")) };
                    eprintln!("interrupted by {signal_name}: the drill of snapshot {} did not finish; {left}", drilled.snapshot);
                    std::process::exit(if signal_name == "SIGTERM" { 143 } else { 130 });
                }
                report.drill = Some(drilled);
            }
            if let Some(path) = &audit {
                std::fs::write(path, stackvault::verify::html_report(&report, &context)).with_context(|| format!("writing the audit report to {}", path.display()))?;
            }
            if let Err(e) = turns.done(read) {
                eprintln!("warning: cannot note the sample's turn in {}: {e}; the next run reads the same share", config.cache_dir().display());
            }
            if json {
                let rfc3339 = |t: &std::time::SystemTime| humantime::format_rfc3339_seconds(*t).to_string();
                let snapshots: Vec<serde_json::Value> = report
                    .snapshots
                    .iter()
                    .map(|id| {
                        let (objects, bytes) = report.objects.get(id).copied().unwrap_or_default();
                        let problems = report.broken.get(id).cloned().unwrap_or_default();
                        serde_json::json!({
                            "id": id.hex(),
                            "status": if problems.is_empty() { "ok" } else { "broken" },
                            "objects": objects,
                            "bytes": bytes,
                            "locked_until": report.locked_until.get(id).map(rfc3339),
                            "problems": problems,
                        })
                    })
                    .collect();
                let whole = serde_json::json!({ "snapshots": snapshots, "unreadable": report.unreadable, "notes": report.notes, "packs_read": report.packs_read, "drill": report.drill, "ok": report.ok() });
                println!("{}", serde_json::to_string_pretty(&whole)?);
                return Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            for id in &report.snapshots {
                let locked = report.locked_until.get(id).map(|t| format!(" (locked until {})", humantime::format_rfc3339_seconds(*t))).unwrap_or_default();
                match report.broken.get(id) {
                    None => println!("snapshot {id}: ok{locked}"),
                    Some(problems) => {
                        println!("snapshot {id}: BROKEN{locked}");
                        for p in problems {
                            println!("  {p}");
                        }
                    }
                }
            }
            for problem in &report.unreadable {
                println!("unreadable: {problem}");
            }
            for note in &report.notes {
                println!("note: {note}");
            }
            let checked = match (read, read.rotation()) {
                (ReadData::None, _) => String::new(),
                (ReadData::Sample { percent, .. }, Some((share, shares))) => format!(", {} packs read ({percent}%: share {} of {shares})", report.packs_read, share + 1),
                _ => format!(", {} packs read", report.packs_read),
            };
            println!("{} snapshots checked{checked}", report.snapshots.len());
            if let Some(drill) = &report.drill {
                print_drill(drill);
            }
            if !report.ok() {
                let broken: Vec<String> = report.broken.keys().map(|id| id.hex()).collect();
                let mut failures = Vec::new();
                if !broken.is_empty() {
                    failures.push(format!("{} broken snapshot(s): {}", broken.len(), broken.join(", ")));
                }
                if !report.unreadable.is_empty() {
                    failures.push(format!("{} unreadable snapshot or index object(s)", report.unreadable.len()));
                }
                if let Some(drill) = report.drill.as_ref().filter(|d| !d.passed()) {
                    failures.push(drill.failure());
                }
                eprintln!("error: {}", failures.join("; "));
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Keygen { output } => {
            let (identity, recipient) = crypt::generate_identity();
            match output {
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("creating {} (an existing identity is never overwritten)", path.display()))?;
                    file.write_all(identity.as_bytes())?;
                    eprintln!("identity written to {}; keep it offline, the sidecar needs only the recipient:", path.display());
                }
                None => print!("{identity}"),
            }
            println!("{recipient}");
        }
        Command::Demo { dir } => stackvault::demo::run(&dir).await?,
        Command::Agent { .. } => bail!("the agent runs without a runtime"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune(config_path: Option<&Path>, retention: &Retention, forget_only: bool) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let options = retention.options(&config, forget_only)?;
    let repo = stackvault::open_repository(&config)?;
    let report = tokio::task::spawn_blocking(move || stackvault::prune::prune(&repo, &options)).await??;
    if retention.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let kept = report.decisions.iter().filter(|d| !d.kept_by.is_empty()).count();
        let verb = if report.dry_run || report.denied.is_some() { "would forget" } else { "forgot" };
        println!("{} snapshots considered: {kept} kept, {verb} {}, {} kept until their locks expire", report.decisions.len(), report.forgotten.len(), report.kept_locked.len());
        for decision in report.decisions.iter().filter(|d| !d.kept_by.is_empty()) {
            println!("  keep {} {} {} ({})", &decision.id[..12], decision.stack, decision.time, decision.kept_by.join(", "));
        }
        let verb = if report.dry_run || report.denied.is_some() { "would delete" } else { "deleted" };
        println!("{verb} {} packs ({}); {} marked packs still referenced were kept", report.deleted_packs, bytes(report.deleted_bytes), report.revived);
        if let Some((id, count, size, from)) = &report.marked {
            println!("marked {count} packs ({}) for deletion from {from} (prune/{}): a prune run after then deletes those still unreferenced", bytes(*size), &id[..12]);
        }
        if report.waiting > 0 {
            println!("{} unreferenced packs ({}) stay locked or held, the last until {}", report.waiting, bytes(report.waiting_bytes), report.waiting_until.as_deref().unwrap_or("a legal hold is lifted"));
        }
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(denied) = &report.denied {
        eprintln!("error: the target refused to delete ({denied}); the lines above say what this run would have deleted: give the credential delete permission");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit status of a backup whose snapshot was staged: taken, but not on the target yet.
const EXIT_STAGED: u8 = 3;
/// The exit status of a run refused because another holds the state directory.
const EXIT_LOCKED: u8 = 4;

fn print_backup(outcome: &stackvault::backup::BackupOutcome) {
    let s = &outcome.snapshot;
    for skip in &outcome.skipped {
        println!("skipped {skip}");
    }
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    for (source, route) in s.sources.iter().zip(&outcome.routes) {
        println!("  {:?} {}: {} entries, {} (read {route})", source.kind, source.name, source.entries, bytes(source.bytes));
        print_excluded(&source.excluded);
    }
    println!(
        "snapshot {} saved: {} entries, {} ({} unchanged files not read), {} new, {} stored in {} new packs, {:.1} s",
        outcome.id,
        s.summary.entries,
        bytes(s.summary.bytes),
        s.summary.unchanged_files,
        bytes(s.summary.new_bytes),
        bytes(s.summary.stored_bytes),
        s.summary.new_packs,
        s.summary.duration_ms as f64 / 1000.0
    );
}

/// The state directory's lock and a runner for one command; `None` (after saying who holds it) when
/// another process holds it for longer than `wait`.
async fn take_lock(config: &Config, command: &'static str, wait: std::time::Duration) -> Result<Option<(RunLock, Runner)>> {
    let state_dir = config.state_dir().to_path_buf();
    let acquired = tokio::task::spawn_blocking(move || RunLock::acquire_waiting(&state_dir, command, wait)).await?;
    let (lock, taken_over) = match acquired {
        Ok(acquired) => acquired,
        Err(e @ LockError::Busy(_)) => {
            eprintln!("error: {e}");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let runner = Runner::new(config.clone(), std::time::Duration::from_secs(86_400))?;
    if let Some(dead) = taken_over {
        let message = format!("took over the lock of {dead}, which is no longer running");
        runner.log.event(stackvault::runner::log::Level::Warn, "", "lock.takeover", &message, serde_json::json!({}));
    }
    Ok(Some((lock, runner)))
}

fn status(config: &Config, json: bool) -> Result<()> {
    use stackvault::runner::{lock, staging::Staging, status::Status};
    let state_dir = config.state_dir();
    let status = Status::load(state_dir);
    let staging = Staging::new(state_dir);
    let pending = staging.list();
    let holder = lock::holder(state_dir);
    let schedule = config.schedule.schedule().map_err(anyhow::Error::msg)?;
    let next = schedule.next_after(std::time::SystemTime::now()).map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let now = stackvault::unix_now();
    if json {
        let pending: Vec<serde_json::Value> = pending
            .iter()
            .map(|p| {
                let mut record = serde_json::to_value(&p.record).expect("a record serializes");
                record["age_seconds"] = serde_json::json!(now - p.record.staged_at);
                record["dir"] = serde_json::json!(p.dir);
                record
            })
            .collect();
        let report = serde_json::json!({
            "last_success": status.last_success,
            "last_failure": status.last_failure,
            "failing": status.failing,
            "schedule": schedule.describe(),
            "next_run": next,
            "pending": pending,
            "staging": {"dir": staging.root(), "bytes": staging.usage(), "max_bytes": config.staging.max_bytes()},
            "lock": holder,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let run = |r: &Option<stackvault::runner::status::RunSummary>| match r {
        None => "never".to_string(),
        Some(r) => format!("{} ({}{}){}", r.time, r.result, r.snapshot.as_ref().map(|s| format!(", snapshot {}", &s[..12.min(s.len())])).unwrap_or_default(), r.reason.as_ref().map(|m| format!(": {m}")).unwrap_or_default()),
    };
    println!("last success: {}", run(&status.last_success));
    println!("last failure: {}", run(&status.last_failure));
    println!("next run:     {} ({})", next.as_deref().unwrap_or("never"), schedule.describe());
    match &holder {
        Some(holder) => println!("lock:         held by {holder}"),
        None => println!("lock:         free"),
    }
    let cap = config.staging.max_bytes().map(bytes).unwrap_or_else(|| "off".into());
    println!("staging:      {} of {cap} in {}", bytes(staging.usage()), staging.root().display());
    for p in &pending {
        let state = match &p.record.lost {
            Some(reason) => format!("LOST ({reason}): upload it with `stackvault push {}`", &p.id()[..12]),
            None => format!("pending, {} attempts{}", p.record.attempts, p.record.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()),
        };
        let age = std::time::Duration::from_secs((now - p.record.staged_at).max(0) as u64);
        println!("  {} of {}: {}, staged {} ago; {state}", &p.id()[..12], p.record.time, bytes(p.record.bytes), humantime::format_duration(age));
    }
    println!("{} pending snapshots", pending.iter().filter(|p| p.record.lost.is_none()).count());
    Ok(())
}

/// Runs a command that may start helper containers; on SIGINT or SIGTERM removes them and stops. The
/// snapshot manifest is written last, so an interrupted run leaves none.
async fn interruptible<T>(config: &Config, work: impl std::future::Future<Output = T>) -> Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let signal_name = tokio::select! {
        result = work => return Ok(result),
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    // Containers this run stopped for the backup run again before it exits.
    for problem in stackvault::docker::abandon_run(config.docker.host.as_deref(), config.state_dir()).await {
        eprintln!("error: {problem}");
    }
    stackvault::runner::lock::release_held();
    eprintln!("interrupted by {signal_name}: no snapshot was written; the next run reuses what was stored");
    std::process::exit(if signal_name == "SIGTERM" { 143 } else { 130 });
}

fn print_drill(drill: &stackvault::drill::DrillReport) {
    for project in &drill.leftovers_removed {
        println!("removed what an earlier, interrupted drill left: project {project}");
    }
    let verdict = if drill.passed() { "passed" } else { "FAILED" };
    println!("drill of snapshot {} ({} {}) as project {}: {verdict} in {:.0} s", drill.snapshot, drill.stack, drill.time, drill.project, drill.seconds);
    for check in &drill.checks {
        println!("  {} {}: {}", if check.passed { "ok  " } else { "FAIL" }, check.what, check.detail);
    }
    for left in &drill.left_behind {
        println!("  not removed (the next drill tries again): {left}");
    }
}

fn print_excluded(excluded: &[stackvault::source::exclude::Excluded]) {
    for e in excluded {
        println!("    excluded by {} ({}): {} entries, {}", e.rule, e.origin, e.entries, bytes(e.bytes));
    }
}

/// A restore's steps: each as a line; on a terminal, the one being written as a bar with its bytes,
/// rate and time left, moved by the bytes the restore has replayed.
struct RestoreSteps {
    shown: std::sync::Arc<std::sync::Mutex<Option<(indicatif::ProgressBar, u64)>>>,
    ticking: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl RestoreSteps {
    fn start() -> Self {
        use std::io::IsTerminal;
        let shown: std::sync::Arc<std::sync::Mutex<Option<(indicatif::ProgressBar, u64)>>> = Default::default();
        let ticking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(std::io::stderr().is_terminal()));
        let ticker = ticking.load(std::sync::atomic::Ordering::Relaxed).then(|| {
            let (shown, ticking) = (shown.clone(), ticking.clone());
            std::thread::spawn(move || {
                while ticking.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some((bar, base)) = shown.lock().expect("progress").as_ref() {
                        bar.set_position(stackvault::restore::bytes_restored().saturating_sub(*base));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
        });
        RestoreSteps { shown, ticking, ticker }
    }

    fn reporter(&self) -> stackvault::restore::Reporter {
        let shown = self.shown.clone();
        let terminal = self.ticker.is_some();
        std::sync::Arc::new(move |progress| {
            let stackvault::restore::Progress::Step { what, bytes } = progress;
            let mut shown = shown.lock().expect("progress");
            if let Some((bar, _)) = shown.take() {
                Self::done(bar);
            }
            match (terminal, bytes) {
                (true, Some(total)) => {
                    let bar = indicatif::ProgressBar::new(total).with_message(what);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{msg} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                            .expect("a valid template"),
                    );
                    *shown = Some((bar, stackvault::restore::bytes_restored()));
                }
                _ => println!("{what}"),
            }
        })
    }

    fn stop(mut self) {
        self.ticking.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        if let Some((bar, _)) = self.shown.lock().expect("progress").take() {
            Self::done(bar);
        }
    }

    /// A finished bar gives way to its step's line, as without a terminal.
    fn done(bar: indicatif::ProgressBar) {
        bar.finish_and_clear();
        println!("{}: {}", bar.message(), bytes(bar.position()));
    }
}

/// While stderr is a terminal, a bar for the source being read: its bytes, rate and time left (its
/// size at the last run is the estimate; without one, bytes and rate), and what was sent to the
/// target; otherwise silent.
struct Progress {
    started: std::time::Instant,
    ticker: Option<(tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
}

impl Progress {
    fn start() -> Self {
        use std::io::IsTerminal;
        let ticker = std::io::stderr().is_terminal().then(|| {
            let (stop, mut stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                let mut shown: Option<(String, std::time::Instant)> = None;
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut stopped => break,
                    }
                    let Some((step, done)) = stackvault::progress::current() else { continue };
                    if shown.as_ref().is_none_or(|(what, _)| *what != step.what) {
                        shown = Some((step.what.clone(), std::time::Instant::now()));
                    }
                    let seconds = shown.as_ref().map_or(0.0, |(_, since)| since.elapsed().as_secs_f64());
                    let rate = done as f64 / seconds.max(0.5);
                    // A source that grew since the last run ends past its estimate: no time left is told then.
                    let of = match step.expected.filter(|&total| total >= done) {
                        Some(total) => {
                            let left = ((total - done) as f64 / rate.max(1.0)).round() as u64;
                            format!("/{} ({}%), {} left", bytes(total), done * 100 / total.max(1), humantime::format_duration(std::time::Duration::from_secs(left)))
                        }
                        None => String::new(),
                    };
                    let sent = bytes(stackvault::storage::bytes_sent());
                    eprint!("\r\x1b[K{} {}{of} at {}/s; sent {sent}", step.what, bytes(done), bytes(rate as u64));
                }
                eprint!("\r\x1b[K");
            });
            (task, stop)
        });
        Progress { started: std::time::Instant::now(), ticker }
    }

    /// Bytes sent and seconds taken.
    async fn stop(self) -> (u64, f64) {
        if let Some((task, stop)) = self.ticker {
            let _ = stop.send(());
            let _ = task.await;
        }
        (stackvault::storage::bytes_sent(), self.started.elapsed().as_secs_f64())
    }
}

/// What `backup --dry-run` (and `check`) found: what is left out, what would be done, each source's scan.
fn print_dry_run(dry: &stackvault::backup::DryRun) {
    for skip in &dry.skipped {
        println!("skipped {skip}");
    }
    for action in &dry.actions {
        println!("would {action}");
    }
    let scans = &dry.sources;
    for scan in scans {
        println!(
            "  {:?} {} (read {}): {} entries; would read {} files, {}; unchanged {} files, {}",
            scan.kind,
            scan.name,
            scan.route,
            scan.entries,
            scan.files_to_read,
            bytes(scan.bytes_to_read),
            scan.unchanged_files,
            bytes(scan.unchanged_bytes)
        );
        print_excluded(&scan.excluded);
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
