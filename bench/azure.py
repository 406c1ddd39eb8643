"""bench/run --azure (issue #12): the Azure Blob target against the filesystem target, on the bench's
mixed dataset (1 GiB by default) as a `paths:` source, in one run: `tar -c | zstd -3 -T2` (the
baseline), stackvault into a directory, stackvault into Azurite (the Blob protocol emulator, on
loopback, with Shared Key), alternating; then a restore and a `verify --read-data` from each target.
Reported: wall time, upload throughput (stored bytes per second), peak RSS (GNU time; target
< 128 MiB while uploading), and the ratios.

Azurite is a Node.js process on the same 2 cores: its throughput bounds the upload, and a real
account's will differ (network, not CPU). Standard library only; needs azurite-blob (.ci/setup).
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import time

import report

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
RSS_LIMIT_MIB = 128


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_azurite(location, port):
    os.makedirs(location, exist_ok=True)
    proc = subprocess.Popen(["azurite-blob", "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", location,
                             "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "successfully listens" in line:
            return proc
    raise SystemExit("azurite-blob did not start (run .ci/setup)")


def stored_bytes(sv, config, env):
    snaps = json.loads(subprocess.run([sv, "-c", config, "snapshots", "--json"], env=env, check=True, stdout=subprocess.PIPE).stdout)
    return snaps[-1]["snapshot"]["summary"]["stored_bytes"]


def run_azure(a, log, make_dataset):
    work = os.path.join(a.dir, "azure")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = os.path.join(work, "data")
    size_mb = a.size_mb or 1024
    make_dataset(data, size_mb)
    subprocess.run(["sh", "-c", "cat $(find %s -type f) > /dev/null" % data], check=True)  # page-cached for all
    sv = a.stackvault
    port = free_port()
    azurite = start_azurite(os.path.join(work, "azurite"), port)
    env = dict(os.environ, AZURE_STORAGE_KEY=KEY)
    for v in ("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING"):
        env.pop(v, None)

    def config(name, repository):
        path = os.path.join(work, name + ".yaml")
        with open(path, "w") as f:
            f.write("stack: bench\npaths: [%s]\nrepository:\n%scache_dir: %s\n" % (data, repository, os.path.join(work, "cache-" + name)))
        return path

    rows = {"tar": [], "fs": [], "azure": []}
    rss = {"fs": [], "azure": []}
    stored = {}
    try:
        for run in range(a.runs):
            wall, _, _ = report.timed(["sh", "-c", "tar -C %s -cf - . | zstd -3 -T2 -q -o %s -f" % (data, os.path.join(work, "data.tar.zst"))])
            rows["tar"].append(wall)
            for target in ("fs", "azure"):
                shutil.rmtree(os.path.join(work, "cache-" + target), ignore_errors=True)
                if target == "fs":
                    repo = os.path.join(work, "repo")
                    shutil.rmtree(repo, ignore_errors=True)
                    cfg = config("fs", "  filesystem:\n    path: %s\n" % repo)
                else:
                    # A new container each run: a full upload every time.
                    cfg = config("azure", "  azure:\n    account: %s\n    container: bench%d\n    endpoint: http://127.0.0.1:%d/%s\n"
                                          "    immutability:\n      required: false\n" % (ACCOUNT, run, port, ACCOUNT))
                subprocess.run([sv, "-c", cfg, "init"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall, kib, _ = report.timed([sv, "-c", cfg, "backup"], env=env)
                rows[target].append(wall)
                rss[target].append(kib)
                stored[target] = stored_bytes(sv, cfg, env)
            log("azure run %d: tar|zstd %.2f s, filesystem %.2f s (%d MiB), Azurite %.2f s (%d MiB)"
                % (run + 1, rows["tar"][-1], rows["fs"][-1], rss["fs"][-1] // 1024, rows["azure"][-1], rss["azure"][-1] // 1024))

        reads = {}
        for target, cfg in (("fs", os.path.join(work, "fs.yaml")), ("azure", os.path.join(work, "azure.yaml"))):
            dest = os.path.join(work, "restore-" + target)
            shutil.rmtree(dest, ignore_errors=True)
            r_wall, r_kib, _ = report.timed([sv, "-c", cfg, "restore", "latest", "--to", dest], env=env)
            v_wall, v_kib, _ = report.timed([sv, "-c", cfg, "verify", "--read-data"], env=env)
            diff = subprocess.run(["diff", "-r", data, os.path.join(dest, "path", data.strip("/").replace("/", "_"))], capture_output=True)
            reads[target] = {"restore_s": r_wall, "restore_rss_kib": r_kib, "verify_read_data_s": v_wall, "verify_rss_kib": v_kib,
                             "restored_identical": diff.returncode == 0}
            shutil.rmtree(dest, ignore_errors=True)

        med = {k: statistics.median(v) for k, v in rows.items()}
        mib = stored["azure"] / 2**20
        results = {
            "meta": {"what": "issue #12 Azure row: paths source, filesystem target vs Azurite", "size_mb": size_mb, "runs": a.runs,
                     "azurite": subprocess.run(["azurite-blob", "--version"], capture_output=True, text=True).stdout.strip()},
            "rows": {
                "tar_zstd_s": rows["tar"], "filesystem_s": rows["fs"], "azurite_s": rows["azure"],
                "filesystem_rss_kib": rss["fs"], "azurite_rss_kib": rss["azure"],
                "stored_bytes": stored["azure"],
                "filesystem_mib_per_s": stored["fs"] / 2**20 / med["fs"],
                "azurite_mib_per_s": mib / med["azure"],
                "ratio_azurite_to_filesystem": med["azure"] / med["fs"],
                "ratio_azurite_to_tar": med["azure"] / med["tar"],
                "reads": reads,
            },
            "targets": {"peak RSS uploading < %d MiB" % RSS_LIMIT_MIB: max(rss["azure"]) // 1024 < RSS_LIMIT_MIB,
                        "restores from Azurite identical": reads["azure"]["restored_identical"]},
        }
        print("\nstackvault to Azure (Azurite on loopback) beside the filesystem target, %d MiB `paths:` dataset, medians of %d:" % (size_mb, a.runs))
        print("  tar -c | zstd -3 -T2          %6.2f s" % med["tar"])
        print("  backup into a directory        %6.2f s  %.2fx tar  %6.0f MiB/s  peak RSS %d MiB"
              % (med["fs"], med["fs"] / med["tar"], results["rows"]["filesystem_mib_per_s"], max(rss["fs"]) // 1024))
        print("  backup into Azurite            %6.2f s  %.2fx tar  %6.0f MiB/s  peak RSS %d MiB  (%.2fx the directory)"
              % (med["azure"], med["azure"] / med["tar"], results["rows"]["azurite_mib_per_s"], max(rss["azure"]) // 1024,
                 results["rows"]["ratio_azurite_to_filesystem"]))
        for target in ("fs", "azure"):
            r = reads[target]
            print("  %-9s restore %.2f s (%d MiB), verify --read-data %.2f s (%d MiB), identical: %s"
                  % ({"fs": "directory", "azure": "Azurite"}[target], r["restore_s"], r["restore_rss_kib"] // 1024,
                     r["verify_read_data_s"], r["verify_rss_kib"] // 1024, r["restored_identical"]))
        return report.finish(results, a.json)
    finally:
        azurite.kill()
        azurite.wait()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
