#!/usr/bin/env python3
"""Self-test of tests/azure_double.py (the Azure Blob test double).

Starts the double as a subprocess and talks to it with urllib (plus http.client / a raw socket for
keep-alive and Expect: 100-continue), signing requests with its own Shared Key signer, written from
"Authorize with Shared Key" and deliberately not imported from the double.

    python3 tests/azure_double_selftest.py        # prints "N passed, 0 failed", exits 0 on success
"""

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import sys
import traceback
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "azure_double.py")
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-12-02"


# ------------------------------------------------------------------ an independent Shared Key signer

def sign(key_b64, account, method, path, query_pairs, headers):
    """Signature for the Blob service Shared Key scheme (2015-02-21+ string-to-sign).

    path: the URL path as sent (percent-encoded), e.g. "/devstoreaccount1/c/b".
    query_pairs: the decoded (name, value) pairs of the query string.
    headers: dict of the headers that will be sent (any case)."""
    h = {k.lower(): str(v) for k, v in headers.items()}

    def val(name):
        return h.get(name, "")

    length = val("content-length")
    if length == "0":
        length = ""
    parts = [method.upper(), val("content-encoding"), val("content-language"), length, val("content-md5"),
             val("content-type"), val("date"), val("if-modified-since"), val("if-match"),
             val("if-none-match"), val("if-unmodified-since"), val("range")]
    canon_headers = "".join("%s:%s\n" % (k, " ".join(h[k].split()))
                            for k in sorted(k for k in h if k.startswith("x-ms-")))
    # path-style (emulator) URL: the account appears twice
    resource = "/" + account + path
    grouped = {}
    for k, v in query_pairs:
        grouped.setdefault(k.lower(), []).append(v)
    for k in sorted(grouped):
        resource += "\n" + k + ":" + ",".join(sorted(grouped[k]))
    string_to_sign = "\n".join(parts) + "\n" + canon_headers + resource
    mac = hmac.new(base64.b64decode(key_b64), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def rfc1123(t=None):
    return email.utils.format_datetime(t or dt.datetime.now(dt.timezone.utc), usegmt=True)


def days(n):
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=n)


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def h(self, name):
        return self.headers.get(name.lower())

    @property
    def code(self):
        return self.h("x-ms-error-code")

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.code, self.body[:300])


class Client:
    def __init__(self, port, account=ACCOUNT, key=KEY):
        self.port, self.account, self.key = port, account, key

    def request(self, method, path, query=(), headers=None, body=None, sign_it=True, version=VERSION,
                tamper=False, content_type="application/octet-stream"):
        """path: already percent-encoded, starting with /account/..."""
        headers = dict(headers or {})
        headers.setdefault("x-ms-date", rfc1123())
        if version is not None:
            headers.setdefault("x-ms-version", version)
        if body is not None:
            headers["Content-Length"] = str(len(body))
            headers.setdefault("Content-Type", content_type)
        elif method in ("PUT", "POST"):
            headers["Content-Length"] = "0"  # what http.client sends for an empty PUT
        qs = urllib.parse.urlencode(list(query), quote_via=urllib.parse.quote)
        if sign_it:
            sig = sign(self.key, self.account, method, path, list(query), headers)
            if tamper:
                sig = base64.b64encode(b"\0" * 32).decode()
            headers["Authorization"] = "SharedKey %s:%s" % (self.account, sig)
        url = "http://127.0.0.1:%d%s%s" % (self.port, path, "?" + qs if qs else "")
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return Resp(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
        except urllib.error.HTTPError as e:
            return Resp(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())

    def hook(self, method, name, obj=None):
        data = None if obj is None else json.dumps(obj).encode()
        req = urllib.request.Request("http://127.0.0.1:%d/__double/%s" % (self.port, name), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def start_double(*args):
    proc = subprocess.Popen([sys.executable, DOUBLE, "--port", "0", *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening 127.0.0.1:"):
        proc.kill()
        raise RuntimeError("the double did not start: %r" % line)
    return proc, int(line.rsplit(":", 1)[1])


# ------------------------------------------------------------------ the checks

RESULTS = []


def check(name, cond, detail=""):
    RESULTS.append((name, bool(cond), detail))
    print("%s %s%s" % ("ok  " if cond else "FAIL", name, "" if cond else "  -- %s" % (detail,)))


def expect(name, resp, status, code=None):
    good = resp.status == status and (code is None or resp.code == code)
    check(name, good, "got %r, wanted %s %s" % (resp, status, code or ""))
    return good


def xml_props(body):
    root = ET.fromstring(body)
    out = []
    for b in root.iter("Blob"):
        props = {p.tag: (p.text or "") for p in b.find("Properties")}
        out.append((b.findtext("Name"), b.findtext("VersionId"), b.findtext("IsCurrentVersion"), props))
    return root, out


def main_checks(port):
    cl = Client(port)
    A = "/" + ACCOUNT
    C = A + "/vault"
    common_headers = {"x-ms-client-request-id": "selftest"}

    # --- container
    r = cl.request("PUT", C, [("restype", "container")], common_headers)
    expect("create container -> 201", r, 201)
    check("every response has x-ms-request-id, x-ms-version, Date",
          r.h("x-ms-request-id") and r.h("x-ms-version") == VERSION and r.h("date") and r.h("x-ms-client-request-id") == "selftest",
          r.headers)
    expect("create it again -> 409 ContainerAlreadyExists", cl.request("PUT", C, [("restype", "container")]), 409, "ContainerAlreadyExists")
    r = cl.request("GET", C, [("restype", "container")])
    expect("get container properties -> 200", r, 200)
    check("container reports x-ms-immutable-storage-with-versioning-enabled: true",
          r.h("x-ms-immutable-storage-with-versioning-enabled") == "true", r.headers)
    r = cl.request("HEAD", C, [("restype", "container")])
    check("HEAD container properties -> 200, same header", r.status == 200 and
          r.h("x-ms-immutable-storage-with-versioning-enabled") == "true", r)
    expect("missing container -> 404 ContainerNotFound", cl.request("GET", A + "/nope", [("restype", "container")]), 404, "ContainerNotFound")

    # --- auth
    expect("bad signature -> 403 AuthenticationFailed", cl.request("GET", C, [("restype", "container")], tamper=True), 403, "AuthenticationFailed")
    r = cl.request("GET", C, [("restype", "container")], sign_it=False)
    expect("no Authorization -> 401 NoAuthenticationInformation", r, 401, "NoAuthenticationInformation")
    r = cl.request("GET", C, [("restype", "container")], tamper=True)
    try:
        root = ET.fromstring(r.body)
        check("error body is <Error><Code/><Message/>", root.tag == "Error" and root.findtext("Code") == "AuthenticationFailed"
              and root.findtext("Message"), r.body)
    except ET.ParseError:
        check("error body is <Error><Code/><Message/>", False, r.body)
    stale = rfc1123(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20))
    expect("x-ms-date 20 minutes old -> 403 AuthenticationFailed",
           cl.request("GET", C, [("restype", "container")], {"x-ms-date": stale}), 403, "AuthenticationFailed")
    wrong_key = Client(port, key=base64.b64encode(b"k" * 64).decode())
    expect("signed with another key -> 403", wrong_key.request("GET", C, [("restype", "container")]), 403, "AuthenticationFailed")
    expect("no x-ms-version -> 400 MissingRequiredHeader", cl.request("GET", C, [("restype", "container")], version=None), 400, "MissingRequiredHeader")

    # --- Put Blob with policy + legal hold
    name = "snapshots/2024/data blob+1"  # slashes, a space and a plus: percent-encoded on the wire
    B = C + "/" + urllib.parse.quote(name)
    data = os.urandom(70000)
    until = days(30)
    r = cl.request("PUT", B, [], {"x-ms-blob-type": "BlockBlob",
                                  "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
                                  "x-ms-immutability-policy-until-date": rfc1123(until),
                                  "x-ms-immutability-policy-mode": "Unlocked",
                                  "x-ms-legal-hold": "true",
                                  "x-ms-meta-kind": "pack"}, body=data)
    expect("Put Blob with policy + legal hold -> 201", r, 201)
    check("Put Blob answers ETag, Content-MD5, x-ms-version-id",
          r.h("etag") and r.h("content-md5") == base64.b64encode(hashlib.md5(data).digest()).decode() and r.h("x-ms-version-id"), r.headers)
    first_version = r.h("x-ms-version-id")
    r = cl.request("HEAD", B)
    expect("HEAD blob -> 200", r, 200)
    check("HEAD shows size, MD5, type, policy and legal hold",
          r.h("content-length") == str(len(data)) and r.h("x-ms-blob-type") == "BlockBlob"
          and r.h("content-md5") == base64.b64encode(hashlib.md5(data).digest()).decode()
          and r.h("x-ms-immutability-policy-until-date") == rfc1123(until)
          and r.h("x-ms-immutability-policy-mode") == "unlocked" and r.h("x-ms-legal-hold") == "true"
          and r.h("last-modified") and r.h("etag") and r.h("x-ms-meta-kind") == "pack" and r.body == b"", r.headers)
    r = cl.request("HEAD", B, version="2019-12-12")
    check("HEAD with an old x-ms-version omits the immutability headers",
          r.status == 200 and r.h("x-ms-immutability-policy-mode") is None and r.h("x-ms-legal-hold") is None, r.headers)
    expect("Put Blob with a wrong Content-MD5 -> 400 Md5Mismatch",
           cl.request("PUT", C + "/other", [], {"x-ms-blob-type": "BlockBlob", "Content-MD5": base64.b64encode(b"x" * 16).decode()}, body=b"abc"),
           400, "Md5Mismatch")
    expect("Put Blob with a wrong x-ms-content-crc64 -> 400 Crc64Mismatch",
           cl.request("PUT", C + "/other", [], {"x-ms-blob-type": "BlockBlob", "x-ms-content-crc64": "AAAAAAAAAAA="}, body=b"abc"),
           400, "Crc64Mismatch")
    r = cl.request("PUT", C + "/hello", [], {"x-ms-blob-type": "BlockBlob", "x-ms-content-crc64": "YeJLfssylmU="}, body=b"Hello World")
    check("Put Blob with the right x-ms-content-crc64 (value from a real-service recording) -> 201",
          r.status == 201 and r.h("x-ms-content-crc64") == "YeJLfssylmU=", r)
    expect("overwrite with If-None-Match: * -> 412 ConditionNotMet (default)",
           cl.request("PUT", B, [], {"x-ms-blob-type": "BlockBlob", "If-None-Match": "*"}, body=b"new"), 412, "ConditionNotMet")
    expect("immutability header with x-ms-version 2019-12-12 -> 400 UnsupportedHeader",
           cl.request("PUT", C + "/old-version", [], {"x-ms-blob-type": "BlockBlob",
                                                      "x-ms-immutability-policy-until-date": rfc1123(days(1))},
                      body=b"x", version="2019-12-12"), 400, "UnsupportedHeader")
    expect("legal-hold header with x-ms-version 2020-04-08 -> 400 UnsupportedHeader",
           cl.request("PUT", C + "/old-version", [], {"x-ms-blob-type": "BlockBlob", "x-ms-legal-hold": "true"},
                      body=b"x", version="2020-04-08"), 400, "UnsupportedHeader")
    expect("until-date in the past -> 400 InvalidHeaderValue",
           cl.request("PUT", C + "/past", [], {"x-ms-blob-type": "BlockBlob",
                                               "x-ms-immutability-policy-until-date": rfc1123(days(-1))}, body=b"x"),
           400, "InvalidHeaderValue")

    # overwrite without If-None-Match: a new version, the old one keeps its protection
    r = cl.request("PUT", B, [], {"x-ms-blob-type": "BlockBlob"}, body=b"second version")
    expect("overwrite of a protected blob without If-None-Match -> 201 (new version)", r, 201)
    check("the overwrite got a new version id", r.h("x-ms-version-id") and r.h("x-ms-version-id") != first_version, r.headers)
    r = cl.request("GET", B, [("versionid", first_version)])
    check("the previous version is still readable, unchanged, with its policy",
          r.status == 200 and r.body == data and r.h("x-ms-immutability-policy-mode") == "unlocked"
          and r.h("x-ms-is-current-version") == "false", r)
    expect("deleting the protected previous version -> 409 BlobImmutableDueToPolicy",
           cl.request("DELETE", B, [("versionid", first_version)]), 409, "BlobImmutableDueToPolicy")
    blobs = {b["name"]: b for b in cl.hook("GET", "blobs")}
    check("hook /__double/blobs shows 2 versions, current one unprotected",
          blobs[name]["versions"] == 2 and blobs[name]["size"] == len(b"second version") and blobs[name]["until"] is None
          and blobs[name]["legal_hold"] is False, blobs.get(name))

    # --- Put Block x3 + Put Block List
    P = C + "/" + urllib.parse.quote("packs/pack-0001")
    blocks = [os.urandom(1000), os.urandom(2000), os.urandom(1500)]
    ids = [base64.b64encode(b"%-10s" % (b"b%d" % i)).decode() for i in range(3)]
    ids[2] = base64.b64encode(b"\xfb\xef\xbe\xff\xff\xff?&%\xfa").decode()  # "++++////Pz..==": needs URL encoding
    ok = True
    for i, (bid, blk) in enumerate(zip(ids, blocks)):
        hdr = {"Content-MD5": base64.b64encode(hashlib.md5(blk).digest()).decode()} if i == 0 else {}
        r = cl.request("PUT", P, [("comp", "block"), ("blockid", bid)], hdr, body=blk)
        ok = ok and r.status == 201
        if i == 0:
            check("Put Block with Content-MD5 echoes it", r.h("content-md5") == hdr["Content-MD5"], r.headers)
    check("Put Block x3 -> 201 each", ok)
    expect("Put Block with a wrong Content-MD5 -> 400 Md5Mismatch",
           cl.request("PUT", P, [("comp", "block"), ("blockid", ids[0])], {"Content-MD5": base64.b64encode(b"y" * 16).decode()}, body=b"zz"),
           400, "Md5Mismatch")
    expect("Put Block with a block id of another length -> 400 InvalidBlobOrBlock",
           cl.request("PUT", P, [("comp", "block"), ("blockid", base64.b64encode(b"short").decode())], body=b"zz"), 400, "InvalidBlobOrBlock")
    expect("Put Block with a non-base64 block id -> 400 InvalidBlockId",
           cl.request("PUT", P, [("comp", "block"), ("blockid", "not base64!")], body=b"zz"), 400, "InvalidBlockId")
    check("blocks are not visible before the commit", cl.request("GET", P).status == 404)
    xml = ('<?xml version="1.0" encoding="utf-8"?><BlockList>%s</BlockList>'
           % "".join("<Latest>%s</Latest>" % i for i in ids)).encode()
    bad = ('<?xml version="1.0" encoding="utf-8"?><BlockList><Committed>%s</Committed></BlockList>' % ids[0]).encode()
    expect("Put Block List naming an uncommitted block as Committed -> 400 InvalidBlockList",
           cl.request("PUT", P, [("comp", "blocklist")], body=bad, content_type="application/xml"), 400, "InvalidBlockList")
    expect("Put Block List with the blob's MD5 as Content-MD5 (it is the body's) -> 400 Md5Mismatch",
           cl.request("PUT", P, [("comp", "blocklist")], {"Content-MD5": base64.b64encode(hashlib.md5(b"".join(blocks)).digest()).decode()},
                      body=xml, content_type="application/xml"), 400, "Md5Mismatch")
    whole = b"".join(blocks)
    locked_until = days(10)
    r = cl.request("PUT", P, [("comp", "blocklist")], {
        "Content-MD5": base64.b64encode(hashlib.md5(xml).digest()).decode(),
        "x-ms-blob-content-md5": base64.b64encode(hashlib.md5(whole).digest()).decode(),
        "x-ms-immutability-policy-until-date": rfc1123(locked_until),
        "x-ms-immutability-policy-mode": "Locked",
        "If-None-Match": "*"}, body=xml, content_type="application/xml")
    expect("Put Block List (Latest x3, locked policy, If-None-Match: *) -> 201", r, 201)
    r = cl.request("GET", P)
    check("GET returns the three blocks in order, with the stored MD5",
          r.status == 200 and r.body == whole and r.h("content-md5") == base64.b64encode(hashlib.md5(whole).digest()).decode()
          and r.h("x-ms-immutability-policy-mode") == "locked", r)
    expect("If-None-Match: * on the committed blob -> 412", cl.request("PUT", P, [("comp", "blocklist")], {"If-None-Match": "*"},
                                                                         body=xml, content_type="application/xml"), 412, "ConditionNotMet")

    # --- ranged GET
    r = cl.request("GET", P, [], {"Range": "bytes=10-19"})
    check("Range: bytes=10-19 -> 206, 10 bytes, Content-Range",
          r.status == 206 and r.body == whole[10:20] and r.h("content-range") == "bytes 10-19/%d" % len(whole)
          and r.h("content-length") == "10", r)
    r = cl.request("GET", P, [], {"x-ms-range": "bytes=4000-"})
    check("x-ms-range: bytes=4000- -> 206 to the end",
          r.status == 206 and r.body == whole[4000:] and r.h("content-range") == "bytes 4000-%d/%d" % (len(whole) - 1, len(whole)), r)
    r = cl.request("GET", P, [], {"Range": "bytes=0-0", "x-ms-range": "bytes=1-2"})
    check("x-ms-range wins over Range", r.status == 206 and r.body == whole[1:3], r)
    r = cl.request("GET", P, [], {"x-ms-range": "bytes=0-99", "x-ms-range-get-content-md5": "true"})
    check("x-ms-range-get-content-md5 gives the range's MD5",
          r.status == 206 and r.h("content-md5") == base64.b64encode(hashlib.md5(whole[:100]).digest()).decode(), r.headers)
    r = cl.request("GET", P, [], {"Range": "bytes=%d-" % len(whole)})
    expect("range starting past the end -> 416 InvalidRange", r, 416, "InvalidRange")
    r = cl.request("GET", P, [], {"Range": "bytes=4000-999999"})
    check("range ending past the end is cut to the blob", r.status == 206 and r.body == whole[4000:], r)
    etag = cl.request("HEAD", P).h("etag")
    expect("GET with If-None-Match: <its ETag> -> 304", cl.request("GET", P, [], {"If-None-Match": etag}), 304)
    expect("GET with If-Match: another ETag -> 412", cl.request("GET", P, [], {"If-Match": '"0x1"'}), 412, "ConditionNotMet")

    # --- List Blobs
    L = [("restype", "container"), ("comp", "list"), ("include", "immutabilitypolicy,legalhold"), ("maxresults", "1")]
    r = cl.request("GET", C, L)
    check("List Blobs page 1 -> 200 application/xml", r.status == 200 and r.h("content-type") == "application/xml", r)
    root, items = xml_props(r.body)
    marker = root.findtext("NextMarker")
    check("page 1 holds one blob and a NextMarker, MaxResults echoed",
          len(items) == 1 and marker and root.findtext("MaxResults") == "1", r.body)
    names = [items[0][0]]
    pages = 1
    while marker:
        r = cl.request("GET", C, L + [("marker", marker)])
        root, items = xml_props(r.body)
        names += [it[0] for it in items]
        by = {it[0]: it for it in items}
        if "packs/pack-0001" in by:
            props = by["packs/pack-0001"][3]
            check("listing shows ImmutabilityPolicyUntilDate / Mode / LegalHold / Content-Length",
                  props.get("ImmutabilityPolicyUntilDate") == rfc1123(locked_until) and props.get("ImmutabilityPolicyMode") == "locked"
                  and props.get("LegalHold") == "false" and props.get("Content-Length") == str(len(whole)), props)
        marker = root.findtext("NextMarker")
        pages += 1
        if pages > 20:
            break
    check("following NextMarker lists every blob once, sorted", names == sorted(["hello", "packs/pack-0001", name]), names)
    r = cl.request("GET", C, [("restype", "container"), ("comp", "list"), ("prefix", "packs/")])
    root, items = xml_props(r.body)
    check("prefix=packs/ lists one blob, without immutability elements (not included)",
          [it[0] for it in items] == ["packs/pack-0001"] and "ImmutabilityPolicyMode" not in items[0][3]
          and "LegalHold" not in items[0][3] and root.findtext("Prefix") == "packs/", r.body)
    r = cl.request("GET", C, [("restype", "container"), ("comp", "list"), ("include", "versions")])
    root, items = xml_props(r.body)
    check("include=versions lists both versions of the overwritten blob",
          len([it for it in items if it[0] == name]) == 2, [(i[0], i[1], i[2]) for i in items])
    r = cl.request("GET", C, [("restype", "container"), ("comp", "list"), ("delimiter", "/")])
    root, items = xml_props(r.body)
    check("delimiter=/ gives BlobPrefix elements", sorted(p.findtext("Name") for p in root.iter("BlobPrefix")) == ["packs/", "snapshots/"]
          and [it[0] for it in items] == ["hello"], r.body)
    expect("include=legalhold with x-ms-version 2019-12-12 -> 400",
           cl.request("GET", C, [("restype", "container"), ("comp", "list"), ("include", "legalhold")], version="2019-12-12"),
           400, "InvalidQueryParameterValue")

    # --- Set / Delete Blob Immutability Policy on the locked blob
    Q = [("comp", "immutabilityPolicies")]
    r = cl.request("PUT", P, Q, {"x-ms-immutability-policy-until-date": rfc1123(days(20)), "x-ms-immutability-policy-mode": "Locked"})
    check("extend a locked policy -> 200 with until-date and mode",
          r.status == 200 and r.h("x-ms-immutability-policy-until-date") == rfc1123(days(20))
          and r.h("x-ms-immutability-policy-mode") == "locked", r)
    expect("shorten a locked policy -> 409 BlobImmutableDueToPolicy",
           cl.request("PUT", P, Q, {"x-ms-immutability-policy-until-date": rfc1123(days(5)), "x-ms-immutability-policy-mode": "Locked"}),
           409, "BlobImmutableDueToPolicy")
    expect("locked -> unlocked -> 409",
           cl.request("PUT", P, Q, {"x-ms-immutability-policy-until-date": rfc1123(days(30)), "x-ms-immutability-policy-mode": "Unlocked"}),
           409, "BlobImmutableDueToPolicy")
    expect("delete a locked policy -> 409 ImmutabilityPolicyDeleteOnLockedPolicy",
           cl.request("DELETE", P, Q), 409, "ImmutabilityPolicyDeleteOnLockedPolicy")
    expect("Set Blob Immutability Policy with x-ms-version 2019-12-12 -> 400",
           cl.request("PUT", P, Q, {"x-ms-immutability-policy-until-date": rfc1123(days(40))}, version="2019-12-12"), 400)
    etag_before = cl.request("HEAD", P).h("etag")
    check("policy changes leave the ETag alone", etag_before == etag, (etag_before, etag))
    expect("Delete Blob while the locked policy runs -> 409 BlobImmutableDueToPolicy", cl.request("DELETE", P), 409, "BlobImmutableDueToPolicy")

    # unlocked policy: may be shortened, or deleted
    U = C + "/unlocked"
    cl.request("PUT", U, [], {"x-ms-blob-type": "BlockBlob", "x-ms-immutability-policy-until-date": rfc1123(days(30))}, body=b"u")
    r = cl.request("PUT", U, Q, {"x-ms-immutability-policy-until-date": rfc1123(days(2)), "x-ms-immutability-policy-mode": "Unlocked"})
    check("shorten an unlocked policy -> 200", r.status == 200 and r.h("x-ms-immutability-policy-until-date") == rfc1123(days(2)), r)
    expect("Delete Blob while an unlocked policy runs -> 409 BlobImmutableDueToPolicy", cl.request("DELETE", U), 409, "BlobImmutableDueToPolicy")
    expect("delete an unlocked policy -> 200", cl.request("DELETE", U, Q), 200)
    r = cl.request("HEAD", U)
    check("after that, no policy headers", r.status == 200 and r.h("x-ms-immutability-policy-mode") is None, r.headers)
    expect("Delete Blob with no protection -> 202", cl.request("DELETE", U), 202)
    expect("and it is gone -> 404 BlobNotFound", cl.request("GET", U), 404, "BlobNotFound")

    # --- legal hold
    H = C + "/held"
    cl.request("PUT", H, [], {"x-ms-blob-type": "BlockBlob"}, body=b"h")
    r = cl.request("PUT", H, [("comp", "legalhold")], {"x-ms-legal-hold": "true"})
    check("Set Blob Legal Hold true -> 200 x-ms-legal-hold: true", r.status == 200 and r.h("x-ms-legal-hold") == "true", r)
    expect("Delete Blob under a legal hold -> 409 BlobImmutableDueToLegalHold", cl.request("DELETE", H), 409, "BlobImmutableDueToLegalHold")
    r = cl.request("PUT", H, [("comp", "legalhold")], {"x-ms-legal-hold": "false"})
    check("legal hold off -> 200 x-ms-legal-hold: false", r.status == 200 and r.h("x-ms-legal-hold") == "false", r)
    check("HEAD now says x-ms-legal-hold: false", cl.request("HEAD", H).h("x-ms-legal-hold") == "false")
    expect("then Delete Blob -> 202", cl.request("DELETE", H), 202)

    # --- test hooks
    forced = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = cl.hook("POST", "set-policy", {"name": "packs/pack-0001", "until": forced, "mode": "locked"})
    check("hook set-policy forces the current version's policy", out["until"] == forced and out["mode"] == "locked", out)
    expect("an expired locked policy no longer blocks Delete Blob -> 202", cl.request("DELETE", P), 202)
    blobs = {b["name"] for b in cl.hook("GET", "blobs")}
    check("deleted blob is no longer current in /__double/blobs", "packs/pack-0001" not in blobs, blobs)
    log = cl.hook("GET", "requests")
    puts = [e for e in log if e["method"] == "PUT" and e["query"].get("comp") == "blocklist" and e["status"] == 201]
    check("request log records method, path, query, lower-cased headers, status",
          puts and puts[0]["headers"].get("x-ms-immutability-policy-mode") == "Locked"
          and puts[0]["path"] == P and "authorization" in puts[0]["headers"], puts[:1])
    cl.hook("POST", "reset-log")
    check("reset-log empties the log", cl.hook("GET", "requests") == [])

    # --- HTTP details: keep-alive, Expect: 100-continue
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    for _ in range(3):
        hdrs = {"x-ms-date": rfc1123(), "x-ms-version": VERSION}
        hdrs["Authorization"] = "SharedKey %s:%s" % (ACCOUNT, sign(KEY, ACCOUNT, "GET", C + "/hello", [], hdrs))
        conn.request("GET", C + "/hello", headers=hdrs)
        resp = conn.getresponse()
        statuses.append((resp.status, resp.read()))
    sock_same = conn.sock is not None
    conn.close()
    check("three GETs over one keep-alive connection", statuses == [(200, b"Hello World")] * 3 and sock_same, statuses)

    body = b"expect-continue body"
    hdrs = {"x-ms-date": rfc1123(), "x-ms-version": VERSION, "x-ms-blob-type": "BlockBlob",
            "Content-Length": str(len(body)), "Content-Type": "application/octet-stream", "Expect": "100-continue"}
    hdrs["Authorization"] = "SharedKey %s:%s" % (ACCOUNT, sign(KEY, ACCOUNT, "PUT", C + "/expect", [], hdrs))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("PUT %s/expect HTTP/1.1\r\nHost: 127.0.0.1\r\n" % C).encode()
              + "".join("%s: %s\r\n" % kv for kv in hdrs.items()).encode() + b"\r\n")
    first = s.recv(4096)
    s.sendall(body)
    rest = b""
    while b"\r\n\r\n" not in rest:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    s.close()
    check("Expect: 100-continue gets 100 Continue, then 201", first.startswith(b"HTTP/1.1 100") and b" 201 " in rest.split(b"\r\n")[0],
          (first, rest[:80]))

    # chunked request body (hyper sends this for bodies of unknown length)
    hdrs = {"x-ms-date": rfc1123(), "x-ms-version": VERSION, "x-ms-blob-type": "BlockBlob"}
    hdrs["Authorization"] = "SharedKey %s:%s" % (ACCOUNT, sign(KEY, ACCOUNT, "PUT", C + "/chunked", [], hdrs))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", C + "/chunked", body=iter([b"abc", b"def"]), headers=hdrs, encode_chunked=True)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    check("Put Blob with a chunked body and no Content-Length -> 411 MissingContentLengthHeader",
          resp.status == 411 and resp.getheader("x-ms-error-code") == "MissingContentLengthHeader", resp.status)


def variant_checks(port):
    """The double started with --no-worm --if-none-match-conflict 409."""
    cl = Client(port)
    C = "/" + ACCOUNT + "/plain"
    cl.request("PUT", C, [("restype", "container")])
    r = cl.request("GET", C, [("restype", "container")])
    check("--no-worm: x-ms-immutable-storage-with-versioning-enabled: false",
          r.status == 200 and r.h("x-ms-immutable-storage-with-versioning-enabled") == "false", r.headers)
    cl.request("PUT", C + "/b", [], {"x-ms-blob-type": "BlockBlob"}, body=b"1")
    expect("--if-none-match-conflict 409: If-None-Match: * on an existing blob -> 409 BlobAlreadyExists",
           cl.request("PUT", C + "/b", [], {"x-ms-blob-type": "BlockBlob", "If-None-Match": "*"}, body=b"2"), 409, "BlobAlreadyExists")
    r = cl.request("PUT", C + "/c", [], {"x-ms-blob-type": "BlockBlob", "x-ms-immutability-policy-until-date": rfc1123(days(1))}, body=b"3")
    check("--no-worm: a policy on upload is refused (409)", r.status == 409, r)
    r = cl.request("PUT", C + "/b", [], {"x-ms-blob-type": "BlockBlob"}, body=b"22")
    check("--no-worm: overwrite replaces, no version id", r.status == 201 and r.h("x-ms-version-id") is None, r.headers)
    other = Client(port, account="someoneelse")
    expect("another account name -> 403 AuthenticationFailed", other.request("GET", C, [("restype", "container")]), 403, "AuthenticationFailed")


def main():
    procs = []
    try:
        proc, port = start_double()
        procs.append(proc)
        main_checks(port)
        proc2, port2 = start_double("--no-worm", "--if-none-match-conflict", "409")
        procs.append(proc2)
        variant_checks(port2)
    except Exception:
        traceback.print_exc()
        RESULTS.append(("self-test ran to the end", False, "exception"))
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
