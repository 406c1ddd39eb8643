"""Renders charts/stackvault with Helm's own library (helm-python-sdk: Helm's Go SDK, offline) and checks
what a cluster would get: every manifest against the Kubernetes API's schemas (kubernetes-validate,
strict: an unknown field fails), the prometheus-operator kinds against the fields their API documents,
the wiring between the objects (mounts, claims, secrets, selectors, security), and that misspelt values
are rejected by values.schema.json naming the key. Prints JSON for tests/chart.rs, which parses each
rendered configuration with stackvault's own parser: {variant: {config, args, env}}.
Usage: python3 tests/chart.py  (exit 1 and the problems on stderr when a check fails)."""
import copy
import json
import pathlib
import re
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "stackvault"
KUBERNETES = "1.37"
NAMESPACE = "callcenter"
SECRETS_DIR = "/run/secrets/stackvault"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

problems = []


def check(ok, what):
    if not ok:
        problems.append(what)
    return ok


def merged(base, override):
    """base with override's keys set, recursively; None removes a key (as in Helm)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


ALL = helm.values_from_yaml((ROOT / "tests/fixtures/chart-values-all.yaml").read_text())
# (name, release name, values): the defaults, every option on, and the variants that exclude each other.
VARIANTS = [
    ("default", "demo", {}),
    ("all", "cc", ALL),
    ("all-daemon", "cc", merged(ALL, {"mode": "daemon", "serviceMonitor": {"enabled": True}})),
    ("workload-identity", "cc", merged(ALL, {
        "repository": {"azure": {"credential": "workload_identity"}},
        "serviceAccount": {"workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001", "tenantId": "00000000-0000-0000-0000-000000000002"}},
        "credentials": {"azureKey": ""}})),
    ("share-existing", "cc", {
        "suspend": True,
        "repository": {"filesystem": {"existingClaim": "backup-share", "directory": "callcenter"}},
        "state": {"existingClaim": "stackvault-state"},
        "credentials": {"existingSecret": "cc-backup-credentials"},
        "sources": ALL["sources"], "databases": ALL["databases"],
        "restore": {"enabled": True, "snapshot": "3f2a9c0d"}}),
    # The longest release name Helm allows: every name must still fit.
    ("long-name", "a" * 53, merged(ALL, {"mode": "daemon", "suspend": True, "serviceMonitor": {"enabled": True}})),
]

# Misspelt values: values.schema.json must reject each, naming the key.
MISSPELT = [
    ({"schedul": "0 3 * * *"}, "schedul"),
    ({"repository": {"azure": {"containr": "backups"}}}, "containr"),
    ({"sources": [{"name": "uploads", "claimName": "cc-uploads", "mountpath": "/x"}]}, "mountpath"),
    ({"restore": {"identity": {"secretname": "x"}}}, "secretname"),
    ({"securityContext": {"readOnlyRootFileSystem": True}}, "readOnlyRootFileSystem"),
    ({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "k", "labelSelektor": {}}]}}}, "labelSelektor"),
    ({"repository": {"type": "s3"}}, "/repository/type"),
    ({"databases": [{"name": "cc", "engine": "mongodb", "host": "h", "user": "u"}]}, "/databases/0/engine"),
]

# Combinations the schema cannot express, refused by the templates with a message naming the fix.
REFUSED = [
    ({"serviceMonitor": {"enabled": True}}, "serviceMonitor.enabled needs mode: daemon"),
    (merged(ALL, {"credentials": {"azureKey": ""}}), "needs its secret"),
    (merged(ALL, {"credentials": {"databasePasswords": {"reports": None}}}), "credentials.databasePasswords.reports"),
    (merged(ALL, {"repository": {"azure": {"credential": "workload_identity"}}}), "serviceAccount.workloadIdentity.clientId"),
    (merged(ALL, {"restore": {"identity": {"secretName": ""}}}), "restore.identity.secretName"),
    ({"repository": {"type": "azure", "azure": {"account": "acme"}}}, "container"),
]


# prometheus-operator's CRDs are not in Kubernetes' schemas: these are the fields its API reference
# (monitoring.coreos.com/v1) documents for ServiceMonitor and PrometheusRule, checked the same strict way.
SERVICEMONITOR_SPEC = {"jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector", "selectorMechanism", "namespaceSelector",
                       "sampleLimit", "scrapeProtocols", "fallbackScrapeProtocol", "targetLimit", "labelLimit", "labelNameLengthLimit",
                       "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeClass", "bodySizeLimit"}
SERVICEMONITOR_ENDPOINT = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels", "honorTimestamps",
                           "trackTimestampsStaleness", "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenFile", "bearerTokenSecret",
                           "authorization", "basicAuth", "oauth2", "followRedirects", "enableHttp2", "filterRunning", "proxyUrl"}
RULE_GROUP = {"name", "labels", "interval", "query_offset", "limit", "rules", "partial_response_strategy"}
RULE = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
PROM_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
# The kube-state-metrics series the CronJob-mode alerts use (its docs, "CronJob Metrics").
KUBE_STATE_METRICS = {"kube_cronjob_status_last_successful_time", "kube_cronjob_status_last_schedule_time", "kube_cronjob_created"}
STACKVAULT_METRICS = set(re.findall(r"stackvault_[a-z_]+", (ROOT / "src/runner/metrics.rs").read_text()))


def only_keys(obj, allowed, where):
    check(isinstance(obj, dict), f"{where}: not an object")
    if isinstance(obj, dict):
        extra = set(obj) - allowed
        check(not extra, f"{where}: fields the API does not have: {sorted(extra)}")


def string_map(obj, where):
    check(isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()), f"{where}: not a map of strings")


def check_servicemonitor(doc, where):
    only_keys(doc, {"apiVersion", "kind", "metadata", "spec"}, where)
    spec = doc.get("spec", {})
    only_keys(spec, SERVICEMONITOR_SPEC, f"{where}.spec")
    check("selector" in spec, f"{where}.spec.selector is required")
    only_keys(spec.get("selector", {}), {"matchLabels", "matchExpressions"}, f"{where}.spec.selector")
    string_map(spec.get("selector", {}).get("matchLabels", {}), f"{where}.spec.selector.matchLabels")
    check(spec.get("endpoints"), f"{where}.spec.endpoints: none")
    for i, endpoint in enumerate(spec.get("endpoints", [])):
        at = f"{where}.spec.endpoints[{i}]"
        only_keys(endpoint, SERVICEMONITOR_ENDPOINT, at)
        check(isinstance(endpoint.get("port"), str), f"{at}.port: a Service port name")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                check(PROM_DURATION.match(str(endpoint[key])), f"{at}.{key}: {endpoint[key]!r} is not a Prometheus duration")


def check_promql(expr, where, mode):
    depth = 0
    for ch in expr:
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(ch, 0)
        check(depth >= 0, f"{where}: unbalanced brackets in {expr!r}")
    check(depth == 0, f"{where}: unbalanced brackets in {expr!r}")
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        for matcher in filter(None, (m.strip() for m in matchers.split(","))):
            check(re.match(r'^[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"[^"]*"$', matcher), f"{where}: label matcher {matcher!r}")
    for name in re.findall(r"\b((?:stackvault|kube)_[a-z_]+)", expr):
        if mode == "cronjob":
            check(name in KUBE_STATE_METRICS, f"{where}: {name} is not a kube-state-metrics series this rule may use")
        else:
            check(name in STACKVAULT_METRICS, f"{where}: {name} is not a series src/runner/metrics.rs serves")


def check_prometheusrule(doc, where, mode):
    only_keys(doc, {"apiVersion", "kind", "metadata", "spec"}, where)
    spec = doc.get("spec", {})
    only_keys(spec, {"groups"}, f"{where}.spec")
    for g, group in enumerate(spec.get("groups", [])):
        at = f"{where}.spec.groups[{g}]"
        only_keys(group, RULE_GROUP, at)
        check(group.get("name"), f"{at}.name is required")
        check(group.get("rules"), f"{at}.rules: none")
        for r, rule in enumerate(group.get("rules", [])):
            rat = f"{at}.rules[{r}]"
            only_keys(rule, RULE, rat)
            check(("alert" in rule) != ("record" in rule), f"{rat}: exactly one of alert and record")
            check(re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", str(rule.get("alert", rule.get("record", "")))), f"{rat}: bad rule name")
            check(isinstance(rule.get("expr"), str) and rule["expr"], f"{rat}.expr is required")
            check_promql(str(rule.get("expr", "")), f"{rat}.expr", mode)
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    check(PROM_DURATION.match(str(rule[key])), f"{rat}.{key}: {rule[key]!r} is not a Prometheus duration")
            for key in ("labels", "annotations"):
                string_map(rule.get(key, {}), f"{rat}.{key}")


def check_strict_validation_works():
    """kubernetes-validate must catch a misspelt field deep in a pod template, or the checks below prove nothing."""
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]}}}}
    try:
        kubernetes_validate.validate(job, KUBERNETES, strict=True)
        check(False, "kubernetes-validate accepted a misspelt container field: strict mode is not in force")
    except kubernetes_validate.ValidationError:
        pass


def pods(docs):
    """(owner, role, pod template) of every workload."""
    for doc in docs:
        kind = doc["kind"]
        if kind == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        elif kind in ("Job", "Deployment"):
            template = doc["spec"]["template"]
        else:
            continue
        yield f"{kind}/{doc['metadata']['name']}", template["metadata"]["labels"]["app.kubernetes.io/component"], template


def check_variant(name, release, values):
    where = f"[{name}]"
    try:
        rendered = CHART_HANDLE.render(values, name=release, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        check(False, f"{where} render failed: {e}")
        return None
    lint = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    check(not lint["errors"], f"{where} helm lint: {lint['errors']}")
    for message in lint["messages"]:
        check(message["severity"] < 2 or "icon is recommended" in message["error"], f"{where} helm lint: {message}")

    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            check(text.strip(), f"{where} NOTES.txt is empty")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
        at = f"{where} {doc['kind']}/{doc['metadata']['name']}"
        meta = doc["metadata"]
        check(DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= (52 if doc["kind"] == "CronJob" else 63), f"{at}: name {meta['name']!r} too long or not a DNS label")
        check("namespace" not in meta, f"{at}: the namespace is the release's, not the template's")
        labels = meta.get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            check(key in labels, f"{at}: label {key} missing")
        check(all(len(str(v)) <= 63 for v in labels.values()), f"{at}: a label value over 63 characters")
        if doc["kind"] == "ServiceMonitor":
            check_servicemonitor(doc, at)
        elif doc["kind"] == "PrometheusRule":
            check_prometheusrule(doc, at, values.get("mode", "cronjob"))
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as e:
                check(False, f"{at}: Kubernetes {e.version} refuses it at {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                check(False, f"{at}: {e.message}")

    merged_values = CHART_HANDLE.merge_values(values)
    mode = merged_values["mode"]
    configmaps = by_kind.get("ConfigMap", [])
    if not check(len(configmaps) == 1, f"{where}: {len(configmaps)} ConfigMaps"):
        return None
    config_text = configmaps[0]["data"]["stackvault.yaml"]
    config = yaml.safe_load(config_text)
    names = {kind: {d["metadata"]["name"] for d in ds} for kind, ds in by_kind.items()}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in by_kind.get("Secret", [])}
    workload_identity = config["repository"].get("azure", {}).get("credential") == "workload_identity"

    check(("CronJob" in names) == (mode == "cronjob") and ("Deployment" in names) == (mode == "daemon"), f"{where}: workloads do not match mode {mode}")
    verify = merged_values["verify"]
    verify_jobs = [c for c in by_kind.get("CronJob", []) if c["metadata"]["labels"]["app.kubernetes.io/component"] == "verify"]
    check(len(verify_jobs) == (1 if mode == "cronjob" and verify["schedule"] else 0), f"{where}: {len(verify_jobs)} verify CronJobs")
    if mode == "daemon" and verify["schedule"]:
        check(config.get("verify") == {"schedule": {"cron": verify["schedule"], **({"timezone": merged_values["timeZone"]} if merged_values["timeZone"] else {})}, "read_data": verify["readData"]}, f"{where}: the daemon's verify: {config.get('verify')}")
    else:
        check("verify" not in config, f"{where}: verify: in the config outside daemon mode")
    for cronjob in by_kind.get("CronJob", []):
        spec = cronjob["spec"]
        verifies = cronjob in verify_jobs
        check(spec["concurrencyPolicy"] == "Forbid", f"{where}: concurrencyPolicy {spec['concurrencyPolicy']}")
        check(spec["suspend"] is merged_values["suspend"], f"{where}: suspend")
        check(spec["schedule"] == (verify["schedule"] if verifies else merged_values["schedule"]), f"{where}: schedule {spec['schedule']!r}")
        check(spec.get("timeZone", "") == merged_values["timeZone"], f"{where}: timeZone")
        job = spec["jobTemplate"]["spec"]
        if verifies:
            check(job["backoffLimit"] == 0, f"{where}: a failed verification is retried")
            args = job["template"]["spec"]["containers"][0]["args"]
            check(args[3:] == [f"--read-data={verify['readData']}"], f"{where}: verify args {args}")
            continue
        check(job["backoffLimit"] == merged_values["cronjob"]["backoffLimit"], f"{where}: backoffLimit")
        fail_codes = [r["onExitCodes"]["values"] for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
        check(fail_codes == [[3, 4]], f"{where}: exits 3 (staged) and 4 (locked) must end the Job without retries: {fail_codes}")
        for key in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit", "startingDeadlineSeconds"):
            check(spec[key] == merged_values["cronjob"][key], f"{where}: {key}")
    if mode == "daemon":
        check(config.get("listen") == f"0.0.0.0:{merged_values['daemon']['port']}", f"{where}: the daemon must listen on all addresses for the Service")
        deployment = by_kind["Deployment"][0]
        check(deployment["spec"]["replicas"] == (0 if merged_values["suspend"] else 1) and deployment["spec"]["strategy"]["type"] == "Recreate", f"{where}: one daemon, Recreate")
        service = by_kind["Service"][0]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        check(service["spec"]["selector"].items() <= pod_labels.items(), f"{where}: the Service selects no daemon pod")
        check(deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), f"{where}: the Deployment's selector misses its pods")
        ports = [p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]]
        check(service["spec"]["ports"][0]["targetPort"] in ports, f"{where}: the Service's targetPort names no container port")
        for monitor in by_kind.get("ServiceMonitor", []):
            check(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), f"{where}: the ServiceMonitor selects no Service")
            check(monitor["spec"]["endpoints"][0]["port"] in [p["name"] for p in service["spec"]["ports"]], f"{where}: the ServiceMonitor's port is not the Service's")
    else:
        check("listen" not in config and "schedule" not in config, f"{where}: listen/schedule belong to daemon mode (the CronJob schedules)")
    for rule in by_kind.get("PrometheusRule", []):
        exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
        if mode == "cronjob":
            check(f'cronjob="{next(iter(names["CronJob"]))}"' in exprs, f"{where}: the alert does not select the CronJob by its name")
        check(f'namespace="{NAMESPACE}"' in exprs, f"{where}: the alert does not select the namespace")

    state_claim = merged_values["state"]["existingClaim"] or next(n for n in names.get("PersistentVolumeClaim", []) if n.endswith("-state"))
    fs = merged_values["repository"]["filesystem"]
    args_seen, env_seen = [], []
    for owner, role, template in pods(docs):
        at = f"{where} {owner}"
        spec = template["spec"]
        labels = template["metadata"]["labels"]
        check(spec.get("automountServiceAccountToken") is False, f"{at}: a service account token is mounted")
        check(spec["serviceAccountName"] in names.get("ServiceAccount", set()) or not merged_values["serviceAccount"]["create"], f"{at}: unknown service account")
        check((labels.get("azure.workload.identity/use") == "true") == workload_identity, f"{at}: the workload identity label must be there exactly with that credential")
        (container,) = spec["containers"]
        # Backups meet the Pod Security Standards' "restricted" profile; restore "baseline" (root, with
        # capabilities that profile allows).
        sc, psc = container["securityContext"], spec["securityContext"]
        check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False, f"{at}: root filesystem writable or privilege escalation allowed")
        check(sc["capabilities"].get("drop") == ["ALL"], f"{at}: capabilities not dropped")
        check(psc["seccompProfile"]["type"] == "RuntimeDefault", f"{at}: seccomp")
        if role == "restore":
            # Owners are restored exactly: root, with only the capabilities that needs; no fsGroup.
            check(set(sc["capabilities"].get("add", [])) == {"CHOWN", "FOWNER", "DAC_OVERRIDE"} and "fsGroup" not in psc, f"{at}: restore's capabilities")
        else:
            check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and not sc["capabilities"].get("add"), f"{at}: must run as uid 65532 without capabilities")
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        check({m["name"] for m in mounts.values()} == set(volumes), f"{at}: volumes and mounts differ")
        check(volumes[mounts["/tmp"]["name"]].get("emptyDir") is not None, f"{at}: /tmp is no emptyDir")
        check(volumes[mounts["/etc/stackvault"]["name"]]["configMap"]["name"] in names["ConfigMap"], f"{at}: the config is not the rendered ConfigMap")
        data = volumes[mounts["/var/lib/stackvault"]["name"]]
        if role in ("restore", "init"):
            check("emptyDir" in data, f"{at}: {role} must leave the state PVC and its lock to the backups")
        else:
            check(data["persistentVolumeClaim"]["claimName"] == state_claim, f"{at}: state PVC")
        for key in ("state_dir", "cache_dir"):
            check(config[key].startswith("/var/lib/stackvault/"), f"{at}: {key} is not on the state volume")
        if "filesystem" in config["repository"]:
            path = config["repository"]["filesystem"]["path"]
            repo_mount = mounts.get(fs["mountPath"])
            check(repo_mount and path.startswith(fs["mountPath"]), f"{at}: the repository path {path} is not on the share's mount")
            if repo_mount:
                claim = volumes[repo_mount["name"]]["persistentVolumeClaim"]["claimName"]
                check(claim == fs["existingClaim"] if fs["existingClaim"] else claim in names["PersistentVolumeClaim"], f"{at}: share claim {claim}")
                check(repo_mount.get("readOnly") is (role == "restore"), f"{at}: the share is read-only exactly for restore")
        # Every path the configuration names is mounted: sources, secret files.
        source_paths = config.get("paths", [])
        for path in source_paths:
            mount = mounts.get(path)
            if role in ("init", "verify"):
                check(mount is None, f"{at}: {role} mounts the source {path}")
                continue
            if check(mount is not None, f"{at}: source {path} is not mounted"):
                claim = volumes[mount["name"]]["persistentVolumeClaim"]
                read_only = role != "restore"
                check(mount["readOnly"] is read_only and bool(claim.get("readOnly")) is read_only, f"{at}: source {path} must be read-only except for restore")
        secret_files = [db["password_file"] for db in config.get("databases", [])]
        azure = config["repository"].get("azure", {})
        secret_files += [azure[k] for k in ("key_file", "sas_file", "connection_string_file") if k in azure]
        if secret_files:
            secret_volume = volumes.get(mounts.get(SECRETS_DIR, {}).get("name"), {}).get("secret", {})
            secret_name = secret_volume.get("secretName")
            existing = merged_values["credentials"]["existingSecret"]
            check(secret_name == existing if existing else secret_name in secrets, f"{at}: credentials Secret {secret_name} not mounted")
            for path in secret_files:
                key = path.removeprefix(SECRETS_DIR + "/")
                check(path.startswith(SECRETS_DIR + "/") and (secret_name not in secrets or secrets[secret_name].get(key)), f"{at}: {path} is no key of the Secret {secret_name}")
        else:
            check(SECRETS_DIR not in mounts, f"{at}: credentials mounted without need")
        identity_secret = merged_values["restore"]["identity"]["secretName"]
        holds_identity = any(v.get("secret", {}).get("secretName") == identity_secret for v in volumes.values()) if identity_secret else False
        check(holds_identity == (role == "restore" and bool(identity_secret)), f"{at}: only the restore Job may hold the age identity")
        check(("--identity" in container["args"]) == holds_identity, f"{at}: --identity without the identity mounted, or the reverse")
        subcommand = {"backup": "backup", "daemon": "daemon", "init": "init", "restore": "restore", "verify": "verify"}[role]
        check(container["args"][:3] == ["-c", "/etc/stackvault/stackvault.yaml", subcommand], f"{at}: args {container['args']}")
        args_seen.append(container["args"])
        for var in container.get("env", []):
            env_seen.append({"name": var["name"], "value": var.get("value")})
    return {"config": config_text, "args": args_seen, "env": env_seen}


def check_rejections():
    count = 0
    for values, key in MISSPELT:
        try:
            CHART_HANDLE.render(values, name="demo", namespace=NAMESPACE)
            check(False, f"values.schema.json accepted {values}")
        except helm.HelmValuesError as e:
            check(key in str(e), f"the schema's error for {values} does not name {key!r}: {e}")
            count += 1
    for values, message in REFUSED:
        try:
            CHART_HANDLE.render(values, name="demo", namespace=NAMESPACE)
            check(False, f"the chart rendered {json.dumps(values)[:120]}, which it must refuse ({message})")
        except helm.HelmError as e:
            check(message in str(e), f"the refusal of {json.dumps(values)[:120]} does not say {message!r}: {e}")
            count += 1
    return count


def main():
    global CHART_HANDLE
    CHART_HANDLE = helm.Chart.load(CHART)
    meta = CHART_HANDLE.metadata
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    check(meta["apiVersion"] == "v2" and meta["appVersion"] == version, f"Chart.yaml: apiVersion {meta['apiVersion']}, appVersion {meta['appVersion']} (crate {version})")
    schema = CHART_HANDLE.schema
    check(schema and schema["$schema"] == "http://json-schema.org/draft-07/schema#", "values.schema.json is not draft-07")

    def closed(node, at):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                check(node.get("additionalProperties") is False, f"values.schema.json {at}: additionalProperties is not false")
            for key, value in node.items():
                closed(value, f"{at}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                closed(value, f"{at}/{i}")
    closed(schema, "")
    check_strict_validation_works()

    results = {name: check_variant(name, release, values) for name, release, values in VARIANTS}
    rejected = check_rejections()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"{len(VARIANTS)} renders checked against Kubernetes {KUBERNETES}, {rejected} bad values refused", file=sys.stderr)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
