"""Compares `docker inspect` of a container on two engines, field by field, and prints every field
that differs other than those that are the engine's own: ids, timestamps, state, host paths below the
engine's data root, and addresses the engine assigned. Shares no code with stackvault.

usage: inspectdiff.py HOST_A HOST_B NAME_A [NAME_B]   (HOST "" = the default engine)
exit 0 when only such fields differ."""
import json
import re
import subprocess
import sys

ENGINE_OWN = [
    r"^\.Id$", r"^\.Created$", r"^\.State\.", r"^\.ExecIDs", r"^\.Config\.Hostname$", r"^\.HostnamePath$", r"^\.HostsPath$",
    r"^\.ResolvConfPath$", r"^\.LogPath$", r"^\.GraphDriver\.", r"^\.Mounts\[\d+\]\.Source$",
    r"^\.NetworkSettings\.(SandboxID|SandboxKey)$",
    r"^\.NetworkSettings\.Networks\.[^.]+\.(EndpointID|NetworkID|Gateway|IPAddress|MacAddress|IPPrefixLen|GlobalIPv6Address|GlobalIPv6PrefixLen|IPv6Gateway)$",
]


def inspect(host, name):
    args = ["docker"] + (["-H", host] if host else []) + ["inspect", name]
    return json.loads(subprocess.run(args, check=True, capture_output=True).stdout)[0]


def flat(o, p=""):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from flat(v, p + "." + k)
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from flat(v, "%s[%d]" % (p, i))
    else:
        yield p, o


def main():
    host_a, host_b, name_a = sys.argv[1:4]
    name_b = sys.argv[4] if len(sys.argv) > 4 else name_a
    a, b = inspect(host_a, name_a), inspect(host_b, name_b)
    # The engine's alias of its own short id.
    ids = (a["Id"][:12], b["Id"][:12])
    fa, fb = dict(flat(a)), dict(flat(b))
    differ = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if va == vb or va in ids and vb in ids or any(re.search(p, key) for p in ENGINE_OWN):
            continue
        differ.append("%s: %r != %r" % (key, va, vb))
    for line in differ:
        print(line)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
