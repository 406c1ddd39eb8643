//! The Helm chart (charts/stackvault): tests/chart.py renders it with Helm's own library and checks the
//! manifests against Kubernetes' schemas; here every rendered configuration goes through stackvault's
//! own parser (unknown keys are errors), every STACKVAULT_ variable through its environment overrides,
//! and every container's arguments through its command line, so the chart cannot emit what stackvault
//! rejects.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use stackvault::config::{AzureCredential, Config, LockMode, Target};

fn rendered() -> serde_json::Map<String, serde_json::Value> {
    let out = python("chart.py", &[]);
    assert!(out.status.success(), "tests/chart.py found problems in the chart:\n{}", text(&out.stderr));
    eprintln!("{}", text(&out.stderr).trim());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("tests/chart.py prints JSON").as_object().unwrap().clone()
}

/// The rendered configuration, parsed as stackvault parses its file.
fn parse(variant: &str, render: &serde_json::Value) -> Config {
    let text = render["config"].as_str().unwrap();
    Config::parse(text, &format!("{variant}/stackvault.yaml")).unwrap_or_else(|e| panic!("stackvault rejects the [{variant}] configuration: {e}\n{text}"))
}

#[test]
fn every_render_of_the_chart_is_a_configuration_stackvault_accepts() {
    let renders = rendered();
    assert_eq!(renders.len(), 6, "variants: {:?}", renders.keys().collect::<Vec<_>>());
    let servers: usize = renders.iter().map(|(variant, render)| parse(variant, render).databases.len()).sum();
    assert!(servers > 0, "no render has a databases: entry for stackvault's parser to check");
    for (variant, render) in &renders {
        let config = parse(variant, render);
        assert!(config.stack().is_ok(), "[{variant}] no stack name");
        assert!(config.target().is_ok(), "[{variant}] no single target");
        assert!(config.state_dir().starts_with("/var/lib/stackvault") && config.cache_dir().starts_with("/var/lib/stackvault"));

        // Environment variables the pods get: each must be one stackvault knows (values from Secrets
        // get a plausible stand-in).
        let mut config = config;
        for var in render["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            if !name.starts_with("STACKVAULT_") {
                continue;
            }
            let value = match (var["value"].as_str(), name) {
                (Some(value), _) => value.to_string(),
                (None, "STACKVAULT_ALERTS_WEBHOOKS") => "https://hooks.example.com/a,https://hooks.example.com/b".into(),
                (None, other) => panic!("[{variant}] {other} comes from a Secret: give it a stand-in value here"),
            };
            config.apply_env([(name.to_string(), value)].into_iter()).unwrap_or_else(|e| panic!("[{variant}] {e}"));
        }

        // Each container's arguments, as stackvault's command line parses them (`--help` last: clap
        // has parsed and checked everything before it, and nothing runs).
        for args in render["args"].as_array().unwrap() {
            let args: Vec<&str> = args.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            let out = run(Command::new(env!("CARGO_BIN_EXE_stackvault")).args(&args).arg("--help").env_remove("STACKVAULT_CONFIG"));
            assert!(out.status.success(), "[{variant}] stackvault {args:?}: {}", text(&out.stderr));
            // clap takes any `--only` text; restore parses it.
            for only in args.windows(2).filter(|w| w[0] == "--only").map(|w| w[1]) {
                only.parse::<stackvault::restore::Only>().unwrap_or_else(|e| panic!("[{variant}] {e}"));
            }
        }
    }

    let default = parse("default", &renders["default"]);
    assert!(matches!(default.target(), Ok(Target::Filesystem(path)) if path == Path::new("/backup")));
    assert_eq!(default.stack().unwrap(), "demo", "the release name");
    assert!(default.paths.is_empty() && default.encryption.recipients.is_empty() && default.listen.is_none());

    let all = parse("all", &renders["all"]);
    assert_eq!(all.stack().unwrap(), "callcenter");
    assert_eq!(all.paths, [Path::new("/data/uploads"), Path::new("/srv/recordings")]);
    assert_eq!(all.encryption.recipients.len(), 1);
    assert_eq!(all.exclude, ["*.tmp", "!keep.tmp", "**/node_modules/"]);
    assert!(!all.exclude_caches());
    assert_eq!(all.staging.max_bytes(), Some(50 << 30));
    assert_eq!(all.retry.interval(), std::time::Duration::from_secs(600));
    assert_eq!(all.alerts.webhooks.len(), 2);
    let Ok(Target::Azure(azure)) = all.target() else { panic!("all: not Azure") };
    assert_eq!((azure.account.as_deref(), azure.container.as_deref(), azure.prefix.as_str()), (Some("acme"), Some("backups"), "callcenter"));
    assert_eq!(azure.credential, Some(AzureCredential::SharedKey));
    assert_eq!(azure.key_file.as_deref(), Some(Path::new("/run/secrets/stackvault/azure-key")));
    assert_eq!(azure.retry_for, Some(std::time::Duration::from_secs(300)));
    let worm = &azure.immutability;
    assert_eq!((worm.days, worm.mode, worm.legal_hold, worm.required, worm.extend_ahead_days), (365, LockMode::Unlocked, true, false, 45));
    assert!(all.listen.is_none(), "a CronJob's run serves nothing");

    let daemon = parse("all-daemon", &renders["all-daemon"]);
    assert_eq!(daemon.listen, Some("0.0.0.0:9200".parse().unwrap()));
    assert_eq!(daemon.schedule.cron.as_deref(), Some("30 1 * * *"));
    assert_eq!(daemon.schedule.timezone.as_deref(), Some("Europe/Berlin"));
    assert!(daemon.schedule.schedule().is_ok() && daemon.schedule.jitter.is_some() && daemon.health.grace.is_some());

    let identity = parse("workload-identity", &renders["workload-identity"]);
    let Ok(Target::Azure(azure)) = identity.target() else { panic!("workload-identity: not Azure") };
    assert_eq!(azure.credential, Some(AzureCredential::WorkloadIdentity));
    assert!(azure.key_file.is_none() && azure.sas_file.is_none() && azure.connection_string_file.is_none(), "no secret file with an identity");

    let share = parse("share-existing", &renders["share-existing"]);
    assert!(matches!(share.target(), Ok(Target::Filesystem(path)) if path == Path::new("/backup/callcenter")));
}
