"""bench/run --stack (issue #13): time to recovery of a whole stack against the time to copy its raw
data. The stack is tests/stack.rs's (an app container with a files volume, MariaDB with a dump label,
a network), its files volume holding the bench's mixed dataset (1 GiB by default); it is backed up
once with `images: include`, then restored by `stackvault restore latest --docker-host` onto a second
engine on this machine (own data root and socket): first onto the empty engine (the images are
loaded from the snapshot too), then again with the images present. The baseline is `cp -a` of the
volume's files into a directory of the same disk. Goal: time to recovery <= 2 x the copy.

Standard library only; needs root, dockerd, and the test images (.ci/setup).
"""

import os
import re
import shutil
import statistics
import subprocess
import time

import report

DB_IMAGE = "stackvault-test/db:1"
APP_IMAGE = "stackvault-test/busybox:1"
PASSWORD = "bench-pw"
LIMIT = 2.0


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw).stdout.strip()


def run_stack(a, log, make_dataset):
    work = os.path.join(a.dir, "stack")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    p = a.docker_project + "stk"
    b_dir = os.path.join(work, "engine-b")
    b_host = "unix://%s/docker.sock" % b_dir
    daemon = None

    def cleanup_a():
        for c in ("%s-app-1" % p, "%s-db-1" % p):
            subprocess.run(["docker", "rm", "-f", c], capture_output=True)
        for v in ("%s_db" % p, "%s_files" % p):
            subprocess.run(["docker", "volume", "rm", v], capture_output=True)
        subprocess.run(["docker", "network", "rm", "%s_default" % p], capture_output=True)

    def clear_b(images):
        for c in sh(["docker", "-H", b_host, "ps", "-aq"]).split():
            subprocess.run(["docker", "-H", b_host, "rm", "-f", c], capture_output=True)
        subprocess.run(["docker", "-H", b_host, "volume", "prune", "-f", "-a"], capture_output=True)
        subprocess.run(["docker", "-H", b_host, "volume", "prune", "-f"], capture_output=True)
        subprocess.run(["docker", "-H", b_host, "network", "prune", "-f"], capture_output=True)
        if images:
            for i in sh(["docker", "-H", b_host, "images", "-aq"]).split():
                subprocess.run(["docker", "-H", b_host, "rmi", "-f", i], capture_output=True)

    cleanup_a()
    try:
        compose = "com.docker.compose.project=" + p
        sh(["docker", "network", "create", "--label", compose, "%s_default" % p])
        for v in ("db", "files"):
            sh(["docker", "volume", "create", "--label", compose, "%s_%s" % (p, v)])
        sh(["docker", "run", "-d", "--name", "%s-db-1" % p, "--network", "%s_default" % p, "--network-alias", "db",
            "--label", compose, "--label", "com.docker.compose.service=db", "--label", "stackvault.dump=auto",
            "-e", "MARIADB_ROOT_PASSWORD=" + PASSWORD, "-e", "MARIADB_DATABASE=calls", "-v", "%s_db:/var/lib/mysql" % p,
            "--health-cmd", "mariadb -uroot -p%s -e 'SELECT 1'" % PASSWORD, "--health-interval", "1s", DB_IMAGE, "mariadb"])
        files = sh(["docker", "volume", "inspect", "%s_files" % p, "-f", "{{.Mountpoint}}"])
        data = os.path.join(files, "data")
        make_dataset(data, a.size_mb or 1024)
        sh(["docker", "run", "-d", "--name", "%s-app-1" % p, "--network", "%s_default" % p, "--label", compose,
            "--label", "com.docker.compose.service=app", "--label", "com.docker.compose.depends_on=db:service_healthy:false",
            "--health-cmd", "test -d /srv/files/data", "--health-interval", "1s", "-v", "%s_files:/srv/files" % p,
            APP_IMAGE, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"])
        for _ in range(240):
            if sh(["docker", "inspect", "-f", "{{.State.Health.Status}}", "%s-db-1" % p]) == "healthy":
                break
            time.sleep(0.5)
        config = os.path.join(work, "stackvault.yaml")
        with open(config, "w") as f:
            f.write("stack: %s\ndocker:\n  select:\n    project: %s\nrepository:\n  filesystem:\n    path: %s\nimages: include\n"
                    "cache_dir: %s\nstate_dir: %s\n" % (p, p, os.path.join(work, "repo"), os.path.join(work, "cache"), os.path.join(work, "state")))
        sv = a.stackvault
        sh([sv, "-c", config, "init"])
        wall, _, _ = report.timed([sv, "-c", config, "backup"])
        log("stack: backed up in %.1f s" % wall)

        os.makedirs(b_dir)
        daemon = subprocess.Popen(["dockerd", "--data-root", os.path.join(b_dir, "root"), "--exec-root", os.path.join(b_dir, "exec"),
                                   "--pidfile", os.path.join(b_dir, "docker.pid"), "-H", b_host, "--bridge=none", "--iptables=false"],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "dockerd-b.log"), "w"))
        for _ in range(120):
            if subprocess.run(["docker", "-H", b_host, "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)

        def recover():
            wall, _, out = report.timed([sv, "-c", config, "restore", "latest", "--docker-host", b_host])
            said = re.search(r"time to recovery: ([0-9.]+) s", out)
            return float(said.group(1)) if said else wall

        copies, warm = [], []
        fresh = recover()
        log("stack: onto the empty engine (images loaded): %.1f s" % fresh)
        copy_dest = os.path.join(os.path.dirname(files), "bench-copy")
        for run in range(a.runs):
            shutil.rmtree(copy_dest, ignore_errors=True)
            subprocess.run(["sync"])
            wall, _, _ = report.timed(["cp", "-a", data, copy_dest])
            copies.append(wall)
            shutil.rmtree(copy_dest, ignore_errors=True)
            clear_b(images=False)
            subprocess.run(["sync"])
            warm.append(recover())
            log("stack run %d: cp -a %.1f s, restore with images present %.1f s" % (run + 1, copies[-1], warm[-1]))
        copy, ttr = statistics.median(copies), statistics.median(warm)
        results = {
            "meta": {"what": "issue #13 time to recovery", "size_mb": a.size_mb or 1024, "runs": a.runs},
            "rows": {"copy_s": copies, "restore_images_present_s": warm, "restore_empty_engine_s": fresh,
                     "ratio": ttr / copy, "ratio_empty_engine": fresh / copy},
            "targets": {"time to recovery <= %.0f x cp -a of the data" % LIMIT: ttr / copy <= LIMIT},
        }
        print("\nstackvault whole-stack restore onto a second engine, %d MiB files volume + MariaDB dump, medians of %d:" % (a.size_mb or 1024, a.runs))
        print("  cp -a of the volume's data              %6.1f s" % copy)
        print("  restore, images present on the engine   %6.1f s  %.2fx" % (ttr, ttr / copy))
        print("  restore onto the empty engine (once)    %6.1f s  %.2fx (loads the 600 MiB of images too)" % (fresh, fresh / copy))
        return report.finish(results, a.json)
    finally:
        if daemon is not None:
            clear_b(images=True)
            daemon.terminate()
            daemon.wait()
        cleanup_a()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
