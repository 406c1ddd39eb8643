#!/usr/bin/env python3
"""A test double of the Azure Blob Storage REST API, for stackvault's immutability tests.

Why it exists: Azurite ignores the immutability headers and answers 501 to Set Blob Immutability
Policy and Set Blob Legal Hold, so WORM behaviour cannot be tested against it.

This is a TEST DOUBLE written from Azure's published REST reference (learn.microsoft.com,
"Azure Storage REST API", the storageservices pages), not from stackvault's client code. Python 3.11
standard library only. Pages it follows (section names as on learn.microsoft.com/rest/api/storageservices/):

  * Authorize with Shared Key ............ string-to-sign (2015-02-21+ form), CanonicalizedHeaders,
                                           CanonicalizedResource, the 15-minute Date window, and the
                                           note that against the storage emulator the account name
                                           appears twice ("/devstoreaccount1/devstoreaccount1/c/b").
                                           Azurite (src/blob/authentication/BlobSharedKeyAuthenticator.ts)
                                           builds it the same way: "/" + account + the URL path.
  * Versioning for the Azure Storage services   x-ms-version on every Shared Key request.
  * Create Container, Get Container Properties
  * Put Blob, Put Block, Put Block List
  * Get Blob, Get Blob Properties, Specifying the range header for Blob service operations
  * List Blobs (Enumerating blob resources)
  * Delete Blob
  * Set Blob Immutability Policy, Delete Blob Immutability Policy, Set Blob Legal Hold
  * Specifying conditional headers for Blob service operations
  * Blob service error codes, Common REST API error codes
  * "Time-based retention policies for immutable blob data" / "Store business-critical blob data
    with immutable storage" (version-level WORM: an overwrite makes a new version, the old version
    keeps its policy; locked policies can only be extended; unlocked ones changed or deleted).

Where the docs are silent, values were taken from recorded responses of the real service (Azure
SDK for JS test recordings: lower-case "unlocked"/"locked" in responses, 202 + x-ms-delete-type-permanent
on Delete Blob, the x-ms-content-crc64 of "Hello World", 400 Crc64Mismatch), and from kopia's Azure
tests, which run against real Azure (Delete Blob on a protected current version -> 409
BlobImmutableDueToPolicy; Delete Blob Immutability Policy on a locked policy ->
ImmutabilityPolicyDeleteOnLockedPolicy). Every such place is marked "NOT FROM THE DOCS" below.
Where no source names an error code at all, the nearest documented code is used and that is said.

SIMPLIFICATIONS (on purpose; each is also commented where it happens):
  * One account (from the command line), path-style URLs only: /<account>/<container>/<blob>.
  * Only the SharedKey scheme (no SharedKeyLite, SAS, OAuth); no anonymous/public containers:
    every request without Authorization gets 401 NoAuthenticationInformation.
  * Only block blobs. No leases, snapshots, tags, tiers, soft delete, customer-provided keys,
    encryption scopes, CORS, container ACLs, container-level (non-version) immutability policies,
    account/container default policies. Operations outside the list above answer
    501 NotImplementedByDouble so a test fails loudly instead of silently passing.
  * Version-level immutability ("WORM") is a property of every container, set from the command
    line (--no-worm turns it off); the create-container request's own header is logged, not used.
    With WORM on, blob versioning is on: each Put Blob / Put Block List adds a version, and Delete
    Blob turns the current version into a previous one. With WORM off there are no versions.
  * x-ms-version is checked for form (YYYY-MM-DD, >= 2009-09-19) and against the feature versions
    this double knows; it is not checked against the list of real service versions.
  * Everything lives in memory, under one lock.
"""

import argparse
import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import itertools
import json
import re
import struct
import sys
import threading
import traceback
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape as xml_escape

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# x-ms-version answered when the request's own is missing or malformed.
DEFAULT_RESPONSE_VERSION = "2021-12-02"
# "This API is available starting in version 2020-06-12" (Set/Delete Blob Immutability Policy);
# Put Blob / Put Block List / List Blobs document their immutability headers and include= values
# as "Version 2020-06-12 and later".
IMMUTABILITY_VERSION = "2020-06-12"
# "This API is available starting in version 2020-04-08" (Set Blob Legal Hold page). Note: the
# x-ms-legal-hold *header* on Put Blob / Put Block List is documented for 2020-06-12 and later.
LEGAL_HOLD_API_VERSION = "2020-04-08"
# Put Blob, Put Block, Put Block List: x-ms-content-crc64 "supported in versions 2019-02-02 or later".
CRC64_VERSION = "2019-02-02"
# Authorize with Shared Key: "The storage services ensure that a request is no older than 15 minutes".
MAX_REQUEST_AGE = dt.timedelta(minutes=15)
# List Blobs: "If the request doesn't specify maxresults, or specifies a value greater than 5,000,
# the server will return up to 5,000 items."
MAX_LIST_RESULTS = 5000
MAX_BLOCK_ID_BYTES = 64  # Put Block: "Prior to encoding, the string must be less than or equal to 64 bytes"
# SIMPLIFICATION: CRC-64 is computed in pure Python (~0.1 s per MiB), so responses carry a computed
# x-ms-content-crc64 only for bodies up to this size, or when the request sent one to check.
CRC64_RESPONSE_LIMIT = 1024 * 1024

LIST_INCLUDE_VALUES = {
    "snapshots", "metadata", "uncommittedblobs", "copy", "deleted", "tags", "versions",
    "deletedwithversions", "immutabilitypolicy", "legalhold", "permissions",
}


# --------------------------------------------------------------------------------------------
# small helpers


def now_utc():
    return dt.datetime.now(dt.timezone.utc)


def rfc1123(t):
    return email.utils.format_datetime(t.astimezone(dt.timezone.utc), usegmt=True)


def rfc3339(t):
    return None if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc1123(value):
    """An RFC 1123 date ('Sun, 06 Nov 1994 08:49:37 GMT') as an aware UTC datetime, or None."""
    try:
        t = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if t is None:
        return None
    if t.tzinfo is None:  # "-0000" zone: treat as UTC
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc)


def parse_rfc3339(value):
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def md5_b64(data):
    return b64(hashlib.md5(data).digest())


def _crc64_table():
    # Azure's CRC-64 (as in the Azure Storage SDKs): reflected polynomial 0x9A6C9329AC4BC9B5,
    # initial value and final xor all ones; sent as the 8 little-endian bytes, base64.
    # Checked against a recorded real-service response: "Hello World" -> "YeJLfssylmU=".
    poly = 0x9A6C9329AC4BC9B5
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_b64(data):
    c = 0xFFFFFFFFFFFFFFFF
    table = _CRC64_TABLE
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return b64(struct.pack("<Q", c ^ 0xFFFFFFFFFFFFFFFF))


def collapse_whitespace(value):
    """Authorize with Shared Key, CanonicalizedHeaders step 4: replace linear whitespace with one
    space, but not inside a quoted string; step 5: trim around the colon."""
    out, in_quotes, pending_space = [], False, False
    for ch in value:
        if ch == '"':
            in_quotes = not in_quotes
        if not in_quotes and ch in " \t\r\n":
            pending_space = True
            continue
        if pending_space and out:
            out.append(" ")
        pending_space = False
        out.append(ch)
    return "".join(out)


_counter = itertools.count(1)


def new_etag():
    # Azure ETags look like "0x8D939F8B8C033AB"; quoted in headers (2011-08-18+), bare in listings.
    return "0x8D%013X" % (int(now_utc().timestamp() * 1000) * 1000 + next(_counter) % 1000)


_last_version_id = [""]


def new_version_id():
    # Version IDs are opaque DateTime values like "2021-06-28T05:51:06.3912363Z"; made unique and
    # increasing here.
    while True:
        t = now_utc()
        vid = t.strftime("%Y-%m-%dT%H:%M:%S.") + "%07dZ" % (t.microsecond * 10 + next(_counter) % 10)
        if vid > _last_version_id[0]:
            _last_version_id[0] = vid
            return vid


class AzureError(Exception):
    """An error answered in the documented form: status, x-ms-error-code and an XML <Error> body."""

    def __init__(self, status, code, message, extra=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra = extra or {}  # more child elements of <Error>, e.g. AuthenticationErrorDetail
        self.headers = headers or {}


# --------------------------------------------------------------------------------------------
# the store


class Version:
    def __init__(self, data, created):
        self.data = data
        self.version_id = None
        self.etag = new_etag()
        self.last_modified = now_utc()
        self.created = created
        self.content_md5 = None  # base64, as stored/returned
        self.content_crc64 = None
        self.content_type = "application/octet-stream"
        self.content_encoding = None
        self.content_language = None
        self.cache_control = None
        self.content_disposition = None
        self.metadata = {}
        self.policy_until = None  # aware datetime or None
        self.policy_mode = None  # "unlocked" | "locked" | None
        self.legal_hold = None  # None: never set (header not returned); else True/False
        self.committed_blocks = []  # [(block id (str, as sent), bytes)]

    def policy_active(self, at):
        return self.policy_until is not None and self.policy_until > at

    def protected(self, at):
        return self.policy_active(at) or bool(self.legal_hold)


class BlobEntry:
    def __init__(self):
        self.versions = []  # oldest first
        self.current = None  # a Version, or None (never committed, or deleted with versioning)
        self.uncommitted = {}  # block id -> bytes
        self.created = None


class Container:
    def __init__(self, name, worm):
        self.name = name
        self.worm = worm
        self.created = now_utc()
        self.etag = new_etag()
        self.blobs = {}  # name -> BlobEntry


class Store:
    def __init__(self):
        self.lock = threading.RLock()
        self.containers = {}
        self.requests = []


# --------------------------------------------------------------------------------------------
# the request handler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; http.server answers "Expect: 100-continue" itself
    server_version = "Windows-Azure-Blob/1.0 (azure_double.py test double)"

    # quiet by default: stdout carries only the "listening" line
    def log_message(self, fmt, *args):
        if self.server.options.verbose:
            sys.stderr.write("azure_double: %s - %s\n" % (self.address_string(), fmt % args))

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_PATCH = do_OPTIONS = lambda self: self.dispatch()

    # ---------------------------------------------------------------- plumbing

    def dispatch(self):
        self.request_id = str(uuid.uuid4())
        self.req_version = None
        self.response_status = None
        self.is_head = self.command == "HEAD"
        raw_target = self.path
        self.raw_path, _, self.raw_query = raw_target.partition("?")
        try:
            self.body = self.read_body()
        except ValueError as e:
            self.close_connection = True
            self.send_error_xml(AzureError(400, "InvalidInput", "The request body could not be read: %s" % e))
            return
        if self.raw_path.startswith("/__double/"):
            self.handle_hook()
            return
        try:
            self.query_pairs = urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True)
        except ValueError:
            self.query_pairs = []
        self.query = {}
        for k, v in self.query_pairs:
            self.query.setdefault(k.lower(), []).append(v)
        try:
            try:
                self.handle_azure()
            except AzureError as e:
                self.send_error_xml(e)
            except Exception:  # a bug in the double: answer like the service would, and say why
                traceback.print_exc(file=sys.stderr)
                self.send_error_xml(AzureError(500, "InternalError",
                                               "The server encountered an internal error. Please retry the request."))
        finally:
            self.log_request_entry()

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            self.body_was_chunked = True
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ValueError("connection closed inside a chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        self.body_was_chunked = False
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        n = int(cl)
        data = self.rfile.read(n)
        if len(data) != n:
            raise ValueError("short body")
        return data

    def log_request_entry(self):
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        query = {}
        for k, v in getattr(self, "query_pairs", []):
            if k in query:
                query[k] = (query[k] if isinstance(query[k], list) else [query[k]]) + [v]
            else:
                query[k] = v
        entry = {
            "method": self.command,
            "path": self.raw_path,
            "query": query,
            "headers": headers,
            "status": self.response_status,
            "body_length": len(self.body or b""),
        }
        with self.server.store.lock:
            self.server.store.requests.append(entry)

    def header(self, name):
        """The header's value, or None; two values for one name -> 400 (Authorize with Shared Key:
        "If any header is duplicated, the service returns status code 400 (Bad Request).")."""
        values = self.headers.get_all(name)
        if not values:
            return None
        if len(values) > 1:
            raise AzureError(400, "InvalidHeaderValue", "The header %s was specified more than once." % name,
                             {"HeaderName": name})
        return values[0].strip()

    def send(self, status, headers=None, body=b"", content_length=None):
        """Every response: x-ms-request-id, x-ms-version, Date, Content-Length (keep-alive)."""
        self.response_status = status
        self.send_response_only(status)
        all_headers = {
            "Server": self.server_version,
            "x-ms-request-id": self.request_id,
            "x-ms-version": self.req_version or DEFAULT_RESPONSE_VERSION,
            "Date": rfc1123(now_utc()),
        }
        crid = self.headers.get("x-ms-client-request-id")
        if crid is not None and len(crid) <= 1024:
            all_headers["x-ms-client-request-id"] = crid
        all_headers.update(headers or {})
        if status not in (204, 304):
            all_headers["Content-Length"] = str(len(body) if content_length is None else content_length)
        else:
            all_headers.pop("Content-Length", None)
        if self.headers.get("Connection", "").lower() == "close":
            all_headers["Connection"] = "close"
            self.close_connection = True
        for k, v in all_headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not self.is_head and status not in (204, 304):
            self.wfile.write(body)
        self.wfile.flush()

    def send_error_xml(self, err):
        # Status and error codes: <?xml ...?><Error><Code/><Message/></Error>, plus x-ms-error-code.
        message = "%s\nRequestId:%s\nTime:%s" % (
            err.message, self.request_id, now_utc().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        parts = ['<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code><Message>%s</Message>'
                 % (xml_escape(err.code), xml_escape(message))]
        for k, v in err.extra.items():
            parts.append("<%s>%s</%s>" % (k, xml_escape(v), k))
        parts.append("</Error>")
        body = "".join(parts).encode("utf-8")
        headers = {"x-ms-error-code": err.code, "Content-Type": "application/xml"}
        headers.update(err.headers)
        if self.is_head:  # no body on HEAD; the code is in x-ms-error-code
            self.send(err.status, headers, b"", content_length=0)
        else:
            self.send(err.status, headers, body)

    def send_json(self, status, obj):
        body = json.dumps(obj, indent=1).encode("utf-8")
        self.send(status, {"Content-Type": "application/json"}, body)

    # ---------------------------------------------------------------- test hooks (not Azure)

    def handle_hook(self):
        store = self.server.store
        route = (self.command, self.raw_path.rstrip("/"))
        try:
            if route == ("GET", "/__double/blobs"):
                with store.lock:
                    out = []
                    for cname in sorted(store.containers):
                        c = store.containers[cname]
                        for name in sorted(c.blobs):
                            entry = c.blobs[name]
                            if entry.current is None:
                                continue
                            out.append(self.hook_blob_json(c, name, entry))
                self.send_json(200, out)
            elif route == ("POST", "/__double/set-policy"):
                req = json.loads(self.body or b"{}")
                with store.lock:
                    c, name, entry = self.hook_find(req)
                    v = entry.current
                    if "until" in req:
                        if req["until"] is None:
                            v.policy_until, v.policy_mode = None, None
                        else:
                            v.policy_until = parse_rfc3339(req["until"]).replace(microsecond=0)
                            v.policy_mode = (req.get("mode") or v.policy_mode or "unlocked").lower()
                    elif "mode" in req:
                        v.policy_mode = req["mode"].lower()
                    if "legal_hold" in req:
                        v.legal_hold = req["legal_hold"]
                    out = self.hook_blob_json(c, name, entry)
                self.send_json(200, out)
            elif route == ("POST", "/__double/create-container"):
                # A WORM container is made by its owner through the management plane (ARM), which
                # this double does not model: the test makes it here, as the owner would.
                req = json.loads(self.body or b"{}")
                with store.lock:
                    if req["name"] not in store.containers:
                        store.containers[req["name"]] = Container(req["name"], worm=not self.server.options.no_worm)
                self.send_json(200, {"ok": True})
            elif route == ("GET", "/__double/requests"):
                with store.lock:
                    out = list(store.requests)
                self.send_json(200, out)
            elif route == ("POST", "/__double/reset-log"):
                with store.lock:
                    store.requests.clear()
                self.send_json(200, {"ok": True})
            elif route == ("POST", "/__double/reset"):
                with store.lock:
                    store.requests.clear()
                    store.containers.clear()
                self.send_json(200, {"ok": True})
            else:
                self.send_json(404, {"error": "no such test hook: %s %s" % route})
        except LookupError as e:
            self.send_json(404, {"error": str(e)})
        except (ValueError, TypeError, AttributeError) as e:
            self.send_json(400, {"error": "bad hook request: %s" % e})

    def hook_find(self, req):
        store = self.server.store
        name = req["name"]
        cands = []
        for cname, c in store.containers.items():
            if req.get("container") not in (None, cname):
                continue
            e = c.blobs.get(name)
            if e is not None and e.current is not None:
                cands.append((c, name, e))
        if not cands:
            raise LookupError("no current blob named %r" % name)
        if len(cands) > 1:
            raise ValueError("blob %r is in several containers; give \"container\"" % name)
        return cands[0]

    @staticmethod
    def hook_blob_json(c, name, entry):
        v = entry.current
        return {
            "container": c.name,
            "name": name,
            "size": len(v.data),
            "until": rfc3339(v.policy_until),
            "mode": v.policy_mode,
            "legal_hold": bool(v.legal_hold),
            "versions": len(entry.versions) if c.worm else 1,
            "version_id": v.version_id,
            "content_md5": v.content_md5,
        }

    # ---------------------------------------------------------------- Azure: auth and routing

    def handle_azure(self):
        opts = self.server.options
        parts = self.raw_path.split("/")  # ["", account, container, blob...]
        account = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""

        # x-ms-version is echoed if well-formed, whatever else fails
        version = self.headers.get("x-ms-version")
        if version is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", version.strip()):
            self.req_version = version.strip()

        self.authenticate()

        if account != opts.account:
            raise AzureError(400, "InvalidUri", "The requested URI does not represent any resource on the server.")

        # Versioning for the Azure Storage services: Shared Key requests must carry x-ms-version
        # (SIMPLIFICATION: no account default version via Set Blob Service Properties).
        if version is None:
            raise AzureError(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified.",
                             {"HeaderName": "x-ms-version"})
        if self.req_version is None or self.req_version < "2009-09-19":
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": "x-ms-version", "HeaderValue": version})

        container = urllib.parse.unquote(parts[2]) if len(parts) > 2 else ""
        blob = urllib.parse.unquote("/".join(parts[3:])) if len(parts) > 3 else ""
        restype = self.q("restype")
        comp = self.q("comp")

        if not container:
            raise AzureError(501, "NotImplementedByDouble", "Account-level operations are not implemented by the test double.")
        if not blob:
            if restype != "container":
                raise AzureError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.",
                                 {"QueryParameterName": "restype", "QueryParameterValue": restype or ""})
            if self.command == "PUT" and comp is None:
                return self.op_create_container(container)
            if self.command in ("GET", "HEAD") and comp is None:
                return self.op_container_properties(container)
            if self.command == "GET" and comp == "list":
                return self.op_list_blobs(container)
            raise AzureError(501, "NotImplementedByDouble", "%s on a container with comp=%s is not implemented by the test double." % (self.command, comp))

        if self.command == "PUT" and comp is None:
            return self.op_put_blob(container, blob)
        if self.command == "PUT" and comp == "block":
            return self.op_put_block(container, blob)
        if self.command == "PUT" and comp == "blocklist":
            return self.op_put_block_list(container, blob)
        if self.command in ("GET", "HEAD") and comp is None:
            return self.op_get_blob(container, blob)
        if self.command == "DELETE" and comp is None:
            return self.op_delete_blob(container, blob)
        if self.command == "PUT" and comp == "immutabilitypolicies":
            return self.op_set_policy(container, blob)
        if self.command == "DELETE" and comp == "immutabilitypolicies":
            return self.op_delete_policy(container, blob)
        if self.command == "PUT" and comp == "legalhold":
            return self.op_set_legal_hold(container, blob)
        raise AzureError(501, "NotImplementedByDouble", "%s on a blob with comp=%s is not implemented by the test double." % (self.command, comp))

    def q(self, name):
        """A query parameter's value (names compared lower-case); comp values lower-cased too."""
        vals = self.query.get(name)
        if not vals:
            return None
        v = vals[-1]
        return v.lower() if name in ("comp", "restype") else v

    def string_to_sign(self, date_value):
        """Authorize with Shared Key, "Blob, Queue, and File services (Shared Key authorization)"."""
        def std(name):
            v = self.header(name)
            return "" if v is None else v

        content_length = std("Content-Length")
        if content_length == "0":  # "the Content-Length field must be an empty string if ... zero"
            content_length = ""
        lines = [
            self.command.upper(),
            std("Content-Encoding"),
            std("Content-Language"),
            content_length,
            std("Content-MD5"),
            std("Content-Type"),
            date_value,
            std("If-Modified-Since"),
            std("If-Match"),
            std("If-None-Match"),
            std("If-Unmodified-Since"),
            std("Range"),
        ]
        # CanonicalizedHeaders: every x-ms-* header, name lower-cased, sorted, "name:value\n";
        # empty values kept as "name:" (2016-05-31 and later).
        xms = {}
        for name, value in self.headers.items():
            lname = name.lower().strip()
            if lname.startswith("x-ms-"):
                if lname in xms:
                    raise AzureError(400, "InvalidHeaderValue", "The header %s was specified more than once." % lname,
                                     {"HeaderName": lname})
                xms[lname] = collapse_whitespace(value.strip())
        canonical_headers = "".join("%s:%s\n" % (k, xms[k]) for k in sorted(xms))
        # CanonicalizedResource: "/" + account + the encoded URI path, exactly as in the URI. With
        # path-style (emulator) URLs the path starts with the account again, so the account name
        # appears twice: "/devstoreaccount1/devstoreaccount1/container/blob" (the page's own note).
        resource = "/" + self.server.options.account + (self.raw_path or "/")
        params = {}
        for k, v in self.query_pairs:  # parse_qsl already URL-decoded names and values
            params.setdefault(k.lower(), []).append(v)
        for k in sorted(params):
            resource += "\n%s:%s" % (k, ",".join(sorted(params[k])))
        return "\n".join(lines) + "\n" + canonical_headers + resource

    def authenticate(self):
        opts = self.server.options
        auth = self.header("Authorization")
        if auth is None:
            # SIMPLIFICATION: no public access; Common REST API error codes:
            # NoAuthenticationInformation, Unauthorized (401).
            raise AzureError(401, "NoAuthenticationInformation",
                             "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.")
        scheme, _, rest = auth.partition(" ")
        account, sep, signature = rest.strip().partition(":")
        if scheme != "SharedKey" or not sep or not account or not signature:
            # SIMPLIFICATION: SharedKeyLite, Bearer and SAS are not implemented.
            raise AzureError(400, "InvalidAuthenticationInfo",
                             "The authentication information was not provided in the correct format. Verify the value of Authorization header.")
        if account != opts.account:
            raise AzureError(403, "AuthenticationFailed",
                             "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                             {"AuthenticationErrorDetail": "The account %s in the Authorization header is not this server's account." % account})

        xms_date = self.header("x-ms-date")
        date = self.header("Date")
        when_text = xms_date if xms_date is not None else date
        if when_text is None:
            raise AzureError(403, "AuthenticationFailed",
                             "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                             {"AuthenticationErrorDetail": "Request date header not specified (x-ms-date or Date)."})
        when = parse_rfc1123(when_text)
        if when is None:
            raise AzureError(403, "AuthenticationFailed",
                             "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                             {"AuthenticationErrorDetail": "The date header %r is not an RFC 1123 date." % when_text})
        if now_utc() - when > MAX_REQUEST_AGE:
            raise AzureError(403, "AuthenticationFailed",
                             "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                             {"AuthenticationErrorDetail": "Request date header too old: %r" % when_text})

        # With x-ms-date set, the page lets the client put an empty line for Date ("you may ignore
        # the Date header ... and simply specify an empty line"); a client may also sign the Date
        # it sent. Both are accepted.
        candidates = [date or ""]
        if xms_date is not None and date:
            candidates.append("")
        for date_value in candidates:
            sts = self.string_to_sign(date_value)
            mac = hmac.new(opts.key_bytes, sts.encode("utf-8"), hashlib.sha256).digest()
            if hmac.compare_digest(b64(mac).encode("ascii"), signature.encode("utf-8", "replace")):
                return
        sts = self.string_to_sign(candidates[0])
        raise AzureError(403, "AuthenticationFailed",
                         "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                         {"AuthenticationErrorDetail": "The MAC signature found in the HTTP request '%s' is not the same as any computed signature. Server used following string to sign: '%s'." % (signature, sts)})

    # ---------------------------------------------------------------- common checks

    def need_version(self, minimum, what, header=None, query=None):
        if self.req_version >= minimum:
            return
        if header is not None:
            # Common REST API error codes / Blob service error codes: UnsupportedHeader (400)
            # "One of the HTTP headers specified in the request is not supported."
            raise AzureError(400, "UnsupportedHeader", "One of the headers specified in the request is not supported.",
                             {"HeaderName": header, "Reason": "%s needs x-ms-version %s or later; the request has %s." % (what, minimum, self.req_version)})
        raise AzureError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.",
                         {"QueryParameterName": query or "comp", "QueryParameterValue": self.q(query or "comp") or "",
                          "Reason": "%s needs x-ms-version %s or later; the request has %s." % (what, minimum, self.req_version)})

    def get_container(self, name):
        c = self.server.store.containers.get(name)
        if c is None:
            raise AzureError(404, "ContainerNotFound", "The specified container does not exist.")
        return c

    def require_length(self):
        # Put Blob / Put Block / Put Block List: Content-Length required; Common REST API error codes:
        # MissingContentLengthHeader, Length Required (411).
        if self.header("Content-Length") is None:
            raise AzureError(411, "MissingContentLengthHeader", "The Content-Length header was not specified.")

    def check_transactional_hashes(self, data):
        """Content-MD5 / x-ms-content-crc64 of the request body. Returns the response headers that
        echo them (Put Block / Put Block List: Content-MD5 only when the request had it, else
        x-ms-content-crc64)."""
        md5 = self.header("Content-MD5")
        crc = self.header("x-ms-content-crc64")
        if md5 is not None and crc is not None:
            # The pages say 400 (Bad Request) but name no error code: NOT FROM THE DOCS.
            raise AzureError(400, "InvalidHeaderValue", "Content-MD5 and x-ms-content-crc64 cannot both be specified.",
                             {"HeaderName": "x-ms-content-crc64"})
        if md5 is not None:
            try:
                raw = base64.b64decode(md5, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 16:
                raise AzureError(400, "InvalidMd5", "The MD5 value specified in the request is invalid. The MD5 value must be 128 bits and Base64-encoded.")
            if raw != hashlib.md5(data).digest():
                raise AzureError(400, "Md5Mismatch", "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
                                 {"UserSpecifiedMd5": md5, "ServerCalculatedMd5": md5_b64(data)})
            return {"Content-MD5": md5_b64(data)}
        if crc is not None:
            self.need_version(CRC64_VERSION, "x-ms-content-crc64", header="x-ms-content-crc64")
            if crc != crc64_b64(data):
                # NOT FROM THE DOCS: the pages say 400 (Bad Request) without a code; Crc64Mismatch
                # and this message are what recorded real-service responses carry (azure-sdk-for-js).
                raise AzureError(400, "Crc64Mismatch", "The CRC64 value specified in the request did not match with the CRC64 value calculated by the server.",
                                 {"UserSpecifiedCrc64": crc, "ServerCalculatedCrc64": crc64_b64(data)})
            return {"x-ms-content-crc64": crc}
        if self.req_version >= CRC64_VERSION and len(data) <= CRC64_RESPONSE_LIMIT:
            return {"x-ms-content-crc64": crc64_b64(data)}
        return {}

    def parse_policy_headers(self, c, required):
        """x-ms-immutability-policy-until-date / -mode (and nothing else). Returns (until, mode) or
        (None, None) when absent and not required."""
        until_text = self.header("x-ms-immutability-policy-until-date")
        mode_text = self.header("x-ms-immutability-policy-mode")
        if until_text is None and mode_text is None and not required:
            return None, None
        if until_text is not None:
            self.need_version(IMMUTABILITY_VERSION, "x-ms-immutability-policy-until-date", header="x-ms-immutability-policy-until-date")
        if mode_text is not None:
            self.need_version(IMMUTABILITY_VERSION, "x-ms-immutability-policy-mode", header="x-ms-immutability-policy-mode")
        if until_text is None:
            raise AzureError(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified.",
                             {"HeaderName": "x-ms-immutability-policy-until-date"})
        until = parse_rfc1123(until_text)
        if until is None:
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": "x-ms-immutability-policy-until-date", "HeaderValue": until_text})
        # Set Blob Immutability Policy: "valid values are with RFC1123 format. Past times are not valid."
        if until <= now_utc():
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": "x-ms-immutability-policy-until-date", "HeaderValue": until_text,
                              "Reason": "Past times are not valid."})
        # "If not specified, default value is Unlocked." Valid: Unlocked / Locked (responses are
        # lower-case, as the pages and recorded responses show).
        mode = "unlocked" if mode_text is None else mode_text.lower()
        if mode not in ("unlocked", "locked"):
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": "x-ms-immutability-policy-mode", "HeaderValue": mode_text})
        self.require_worm(c)
        return until, mode

    def parse_legal_hold_header(self, c, required, minimum):
        text = self.header("x-ms-legal-hold")
        if text is None:
            if required:
                # SIMPLIFICATION: the page marks x-ms-legal-hold "Optional" on Set Blob Legal Hold
                # but says nothing of a request without it; the double asks for it.
                raise AzureError(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified.",
                                 {"HeaderName": "x-ms-legal-hold"})
            return None
        self.need_version(minimum, "x-ms-legal-hold", header="x-ms-legal-hold")
        if text.lower() not in ("true", "false"):
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": "x-ms-legal-hold", "HeaderValue": text})
        self.require_worm(c)
        return text.lower() == "true"

    def require_worm(self, c):
        if not c.worm:
            # NOT FROM THE DOCS (no page names this case's code): immutability on a container
            # without version-level immutability support.
            raise AzureError(409, "ImmutableStorageWithVersioningNotEnabled",
                             "The container does not have version-level immutability (immutable storage with versioning) enabled.")

    def check_write_conditions(self, current):
        """Specifying conditional headers ... "for Write Operations (All Versions)"."""
        im, inm = self.header("If-Match"), self.header("If-None-Match")
        ims, ius = self.header("If-Modified-Since"), self.header("If-Unmodified-Since")
        present = [h for h, v in (("If-Match", im), ("If-None-Match", inm),
                                  ("If-Modified-Since", ims), ("If-Unmodified-Since", ius)) if v is not None]
        allowed_pairs = ({"If-None-Match", "If-Modified-Since"}, {"If-Match", "If-Unmodified-Since"})
        if len(present) > 2 or (len(present) == 2 and set(present) not in allowed_pairs):
            raise AzureError(400, "MultipleConditionHeadersNotSupported", "Multiple condition headers are not supported.")
        # "If a request specifies both If-None-Match and If-Modified-Since, the request is evaluated
        # based on ... If-None-Match"; likewise If-Match over If-Unmodified-Since.
        if inm is not None:
            ims = None
        if im is not None:
            ius = None
        for v in (im, inm):
            if v is not None and "," in v:
                raise AzureError(400, "InvalidHeaderValue", "Only one ETag value may be given for a write operation.",
                                 {"HeaderName": "If-Match" if v is im else "If-None-Match"})
        not_met = AzureError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
        etag = None if current is None else '"%s"' % current.etag
        if im is not None:
            if current is None or (im != "*" and im.strip('"') != current.etag):
                raise not_met
        if inm is not None:
            if inm == "*":
                if current is not None:
                    # Specifying conditional headers, "Write Operations": If-None-Match not met ->
                    # 412 (Precondition Failed); Common REST API error codes: ConditionNotMet (412)
                    # "... not met for a write operation". Microsoft's Python SDK agrees: on
                    # upload_blob(overwrite=False) it turns a 412 ConditionNotMet into its own
                    # "BlobAlreadyExists" error (_upload_helpers._convert_mod_error), which is why
                    # tools print BlobAlreadyExists. Blob service error codes also lists
                    # BlobAlreadyExists (409); --if-none-match-conflict 409 answers that instead.
                    if self.server.options.if_none_match_conflict == 409:
                        raise AzureError(409, "BlobAlreadyExists", "The specified blob already exists.")
                    raise not_met
            elif current is not None and inm.strip('"') == current.etag:
                raise not_met
        if ims is not None:
            t = parse_rfc1123(ims)
            if t is None:
                raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.", {"HeaderName": "If-Modified-Since"})
            if current is not None and current.last_modified.replace(microsecond=0) <= t:
                raise not_met
        if ius is not None:
            t = parse_rfc1123(ius)
            if t is None:
                raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.", {"HeaderName": "If-Unmodified-Since"})
            if current is not None and current.last_modified.replace(microsecond=0) > t:
                raise not_met
        return etag

    def read_conditions_status(self, v):
        """Get Blob / Get Blob Properties, version 2013-08-15 and later:
        If-Match && If-Unmodified-Since && (If-None-Match || If-Modified-Since);
        a failed If-Match / If-Unmodified-Since -> 412, a failed (If-None-Match || If-Modified-Since) -> 304."""
        im, inm = self.header("If-Match"), self.header("If-None-Match")
        ims, ius = self.header("If-Modified-Since"), self.header("If-Unmodified-Since")
        lm = v.last_modified.replace(microsecond=0)

        def etag_in(value):
            return value.strip() == "*" or v.etag in [e.strip().strip('"') for e in value.split(",")]

        if im is not None and not etag_in(im):
            return 412
        if ius is not None:
            t = parse_rfc1123(ius)
            if t is not None and lm > t:
                return 412
        soft = []
        if inm is not None:
            soft.append(not etag_in(inm))
        if ims is not None:
            t = parse_rfc1123(ims)
            soft.append(t is None or lm > t)
        if soft and not any(soft):
            return 304
        return None

    def find_version(self, c, blob):
        entry = c.blobs.get(blob)
        vid = self.q("versionid")
        if entry is not None and vid is not None:
            for v in entry.versions:
                if v.version_id == vid:
                    return entry, v
            raise AzureError(404, "BlobNotFound", "The specified blob does not exist.")
        if entry is None or entry.current is None:
            raise AzureError(404, "BlobNotFound", "The specified blob does not exist.")
        return entry, entry.current

    def version_headers(self, c, v, entry):
        h = {}
        if c.worm and v.version_id is not None:
            h["x-ms-version-id"] = v.version_id
        return h

    def immutability_headers(self, v):
        h = {}
        if self.req_version >= IMMUTABILITY_VERSION:
            # Get Blob Properties: until-date and mode "returned only if an immutability policy is
            # set"; x-ms-legal-hold "not returned if there is no legal hold on the blob".
            if v.policy_until is not None:
                h["x-ms-immutability-policy-until-date"] = rfc1123(v.policy_until)
                h["x-ms-immutability-policy-mode"] = v.policy_mode
            if v.legal_hold is not None:
                h["x-ms-legal-hold"] = "true" if v.legal_hold else "false"
        return h

    def blob_properties_from_request(self, v, put_blob):
        def pick(*names):
            for n in names:
                val = self.header(n)
                if val is not None:
                    return val
            return None

        if put_blob:
            v.content_type = pick("x-ms-blob-content-type", "Content-Type") or "application/octet-stream"
            v.content_encoding = pick("x-ms-blob-content-encoding", "Content-Encoding")
            v.content_language = pick("x-ms-blob-content-language", "Content-Language")
            v.cache_control = pick("x-ms-blob-cache-control", "Cache-Control")
        else:  # Put Block List: only the x-ms-blob-* forms describe the blob
            v.content_type = pick("x-ms-blob-content-type") or "application/octet-stream"
            v.content_encoding = pick("x-ms-blob-content-encoding")
            v.content_language = pick("x-ms-blob-content-language")
            v.cache_control = pick("x-ms-blob-cache-control")
        v.content_disposition = pick("x-ms-blob-content-disposition")
        v.metadata = {k[len("x-ms-meta-"):]: val.strip() for k, val in self.headers.items()
                      if k.lower().startswith("x-ms-meta-")}

    def commit_version(self, c, blob, entry, v):
        """Append a new current version. With version-level WORM (= versioning), the old current
        version is kept, with its own policy and legal hold: Set Blob Immutability Policy, Remarks:
        "For blob level immutability policy, PutBlockList/PutBlob/CopyBlob operations are allowed,
        because these operations will generate a new version"; Set Blob Legal Hold, Remarks: with a
        legal hold "user can't modify or delete the blob except ... PutBlockList/PutBlob/CopyBlob,
        because these operations will generate a new version". Without WORM (and so without
        versioning) the blob is simply replaced."""
        if entry is None:
            entry = c.blobs[blob] = BlobEntry()
        if entry.created is None:
            entry.created = v.created
        v.created = entry.created
        if c.worm:
            v.version_id = new_version_id()
            entry.versions.append(v)
        else:
            entry.versions = [v]
        entry.current = v
        entry.uncommitted = {}  # committing or Put Blob drops the uncommitted blocks
        return entry

    # ---------------------------------------------------------------- container operations

    def op_create_container(self, name):
        # Create Container: 3-63 characters, lower-case letters, digits, dashes, no "--", no dash
        # at either end.
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", name):
            raise AzureError(400, "InvalidResourceName", "The specifed resource name contains invalid characters.")
        store = self.server.store
        with store.lock:
            if name in store.containers:
                raise AzureError(409, "ContainerAlreadyExists", "The specified container already exists.")
            c = store.containers[name] = Container(name, worm=not self.server.options.no_worm)
        self.send(201, {"ETag": '"%s"' % c.etag, "Last-Modified": rfc1123(c.created),
                        "x-ms-request-server-encrypted": "true"})

    def op_container_properties(self, name):
        with self.server.store.lock:
            c = self.get_container(name)
            h = {
                "ETag": '"%s"' % c.etag,
                "Last-Modified": rfc1123(c.created),
                "x-ms-lease-status": "unlocked",
                "x-ms-lease-state": "available",
                "x-ms-has-immutability-policy": "false",
                "x-ms-has-legal-hold": "false",
                "x-ms-default-encryption-scope": "$account-encryption-key",
                "x-ms-deny-encryption-scope-override": "false",
            }
            # Recorded real responses carry "false" when the container has no version-level WORM.
            h["x-ms-immutable-storage-with-versioning-enabled"] = "true" if c.worm else "false"
        self.send(200, h)

    def op_list_blobs(self, name):
        prefix = self.q("prefix") or ""
        delimiter = self.q("delimiter")
        marker = self.q("marker")
        maxresults_text = self.q("maxresults")
        if maxresults_text is not None:
            try:
                maxresults = int(maxresults_text)
            except ValueError:
                maxresults = 0
            # "Setting maxresults to a value less than or equal to zero results in error response code 400"
            if maxresults <= 0:
                raise AzureError(400, "OutOfRangeQueryParameterValue", "One of the query parameters specified in the request URI is outside the permissible range.",
                                 {"QueryParameterName": "maxresults", "QueryParameterValue": maxresults_text, "MinimumAllowed": "1"})
            maxresults = min(maxresults, MAX_LIST_RESULTS)
        else:
            maxresults = MAX_LIST_RESULTS
        include = set()
        for val in self.query.get("include", []):
            for item in val.split(","):
                item = item.strip().lower()
                if not item:
                    continue
                if item not in LIST_INCLUDE_VALUES:
                    raise AzureError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.",
                                     {"QueryParameterName": "include", "QueryParameterValue": val})
                include.add(item)
        for item in ("immutabilitypolicy", "legalhold"):
            if item in include:
                self.need_version(IMMUTABILITY_VERSION, "include=" + item, query="include")
        # SIMPLIFICATION: snapshots, uncommittedblobs, copy, deleted, tags, deletedwithversions and
        # permissions are accepted and have nothing to show.

        with self.server.store.lock:
            c = self.get_container(name)
            items = []  # (sort key, kind, payload)
            seen_prefixes = set()
            for bname in sorted(c.blobs):
                if not bname.startswith(prefix):
                    continue
                entry = c.blobs[bname]
                if delimiter:
                    cut = bname.find(delimiter, len(prefix))
                    if cut >= 0:
                        p = bname[:cut + len(delimiter)]
                        if p not in seen_prefixes and (entry.current is not None or ("versions" in include and entry.versions)):
                            seen_prefixes.add(p)
                            items.append(((p, ""), "prefix", p))
                        continue
                if "versions" in include and c.worm:
                    for v in entry.versions:
                        items.append(((bname, v.version_id), "blob", (bname, v, v is entry.current)))
                elif entry.current is not None:
                    items.append(((bname, ""), "blob", (bname, entry.current, True)))
            items.sort(key=lambda it: it[0])
            if marker:
                try:
                    mk = tuple(json.loads(base64.urlsafe_b64decode(marker.encode("ascii"))))
                except (ValueError, binascii.Error, TypeError):
                    raise AzureError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.",
                                     {"QueryParameterName": "marker", "QueryParameterValue": marker})
                items = [it for it in items if it[0] >= mk]
            page, rest = items[:maxresults], items[maxresults:]
            next_marker = ""
            if rest:
                # The marker is opaque to the client ("The marker value is opaque to the client").
                next_marker = base64.urlsafe_b64encode(json.dumps(list(rest[0][0])).encode()).decode("ascii")

            host = self.headers.get("Host") or "127.0.0.1"
            out = ['<?xml version="1.0" encoding="utf-8"?>',
                   '<EnumerationResults ServiceEndpoint="%s" ContainerName="%s">'
                   % (xml_escape("http://%s/%s/" % (host, self.server.options.account), {'"': "&quot;"}),
                      xml_escape(c.name, {'"': "&quot;"}))]
            # "the Prefix, Marker, MaxResults, and Delimiter elements are present only if they were
            # specified on the request URI"
            if self.q("prefix") is not None:
                out.append("<Prefix>%s</Prefix>" % xml_escape(prefix))
            if marker is not None:
                out.append("<Marker>%s</Marker>" % xml_escape(marker))
            if maxresults_text is not None:
                out.append("<MaxResults>%d</MaxResults>" % maxresults)
            if delimiter is not None:
                out.append("<Delimiter>%s</Delimiter>" % xml_escape(delimiter))
            out.append("<Blobs>")
            for _, kind, payload in page:
                if kind == "prefix":
                    out.append("<BlobPrefix><Name>%s</Name></BlobPrefix>" % xml_escape(payload))
                    continue
                bname, v, is_current = payload
                out.append("<Blob><Name>%s</Name>" % xml_escape(bname))
                if c.worm:
                    out.append("<VersionId>%s</VersionId>" % v.version_id)
                    if is_current:
                        out.append("<IsCurrentVersion>true</IsCurrentVersion>")
                out.append("<Properties>")
                props = [
                    ("Creation-Time", rfc1123(v.created)),
                    ("Last-Modified", rfc1123(v.last_modified)),
                    ("Etag", v.etag),
                    ("Content-Length", str(len(v.data))),
                    ("Content-Type", v.content_type),
                    ("Content-Encoding", v.content_encoding),
                    ("Content-Language", v.content_language),
                    ("Content-CRC64", v.content_crc64),
                    ("Content-MD5", v.content_md5),
                    ("Cache-Control", v.cache_control),
                    ("Content-Disposition", v.content_disposition),
                    ("BlobType", "BlockBlob"),
                    ("AccessTier", "Hot"),
                    ("AccessTierInferred", "true"),
                    ("LeaseStatus", "unlocked"),
                    ("LeaseState", "available"),
                    ("ServerEncrypted", "true"),
                ]
                # "The ImmutabilityPolicyUntilDate and ImmutabilityPolicyMode elements are present
                # only if the include=immutabilitypolicy parameter was specified"; "The LegalHold
                # element is present only if the include=legalhold parameter was specified".
                if "immutabilitypolicy" in include and v.policy_until is not None:
                    props.append(("ImmutabilityPolicyUntilDate", rfc1123(v.policy_until)))
                    props.append(("ImmutabilityPolicyMode", v.policy_mode))
                if "legalhold" in include:
                    props.append(("LegalHold", "true" if v.legal_hold else "false"))
                for k, val in props:
                    out.append("<%s />" % k if val is None else "<%s>%s</%s>" % (k, xml_escape(val), k))
                out.append("</Properties>")
                if "metadata" in include:
                    out.append("<Metadata>%s</Metadata>" % "".join(
                        "<%s>%s</%s>" % (k, xml_escape(val), k) for k, val in sorted(v.metadata.items())))
                out.append("</Blob>")
            out.append("</Blobs>")
            out.append("<NextMarker>%s</NextMarker>" % xml_escape(next_marker) if next_marker else "<NextMarker />")
            out.append("</EnumerationResults>")
        self.send(200, {"Content-Type": "application/xml"}, "".join(out).encode("utf-8"))

    # ---------------------------------------------------------------- blob writes

    def op_put_blob(self, cname, blob):
        blob_type = self.header("x-ms-blob-type")
        if blob_type is None:
            raise AzureError(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified.",
                             {"HeaderName": "x-ms-blob-type"})
        if blob_type != "BlockBlob":
            if blob_type in ("PageBlob", "AppendBlob"):
                raise AzureError(501, "NotImplementedByDouble", "Only block blobs are implemented by the test double.")
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": "x-ms-blob-type", "HeaderValue": blob_type})
        self.require_length()
        data = self.body
        echo = self.check_transactional_hashes(data)
        with self.server.store.lock:
            c = self.get_container(cname)
            until, mode = self.parse_policy_headers(c, required=False)
            legal_hold = self.parse_legal_hold_header(c, required=False, minimum=IMMUTABILITY_VERSION)
            entry = c.blobs.get(blob)
            self.check_write_conditions(entry.current if entry else None)
            v = Version(data, now_utc())
            self.blob_properties_from_request(v, put_blob=True)
            # Put Blob: "When omitted in version 2012-02-12 and later, the Blob service generates an
            # MD5 hash"; x-ms-blob-content-md5 sets the stored value.
            v.content_md5 = self.header("x-ms-blob-content-md5") or md5_b64(data)
            v.content_crc64 = echo.get("x-ms-content-crc64")
            v.policy_until, v.policy_mode, v.legal_hold = until, mode, legal_hold
            entry = self.commit_version(c, blob, entry, v)
            # Put Blob response: "The Content-MD5 value returned is computed by the Blob service";
            # x-ms-content-crc64 likewise (see CRC64_RESPONSE_LIMIT).
            h = {"ETag": '"%s"' % v.etag, "Last-Modified": rfc1123(v.last_modified),
                 "Content-MD5": md5_b64(data), "x-ms-request-server-encrypted": "true"}
            if v.content_crc64 is not None:
                h["x-ms-content-crc64"] = v.content_crc64
            h.update(self.version_headers(c, v, entry))
        self.send(201, h)

    def op_put_block(self, cname, blob):
        block_id = self.q("blockid")
        if block_id is None:
            raise AzureError(400, "MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is not specified.",
                             {"QueryParameterName": "blockid"})
        try:
            raw_id = base64.b64decode(block_id, validate=True)
        except (binascii.Error, ValueError):
            raw_id = None
        if raw_id is None or len(raw_id) > MAX_BLOCK_ID_BYTES or not block_id:
            raise AzureError(400, "InvalidBlockId", "The specified block ID is invalid. The block ID must be Base64-encoded.")
        self.require_length()
        data = self.body
        echo = self.check_transactional_hashes(data)
        with self.server.store.lock:
            c = self.get_container(cname)
            entry = c.blobs.get(blob)
            if entry is None:
                entry = c.blobs[blob] = BlobEntry()
            # Put Block, Remarks: "For a given blob, all block IDs must be the same length. If a
            # block is uploaded with a block ID of a different length than the block IDs for any
            # existing uncommitted blocks, the service returns error response code 400".
            # (Error code NOT FROM THE DOCS: InvalidBlobOrBlock is the Blob service code the real
            # service is known to use here.)
            if entry.uncommitted and len(next(iter(entry.uncommitted))) != len(block_id):
                raise AzureError(400, "InvalidBlobOrBlock", "The specified blob or block content is invalid.")
            entry.uncommitted[block_id] = data
        self.send(201, dict(echo, **{"x-ms-request-server-encrypted": "true"}))

    def op_put_block_list(self, cname, blob):
        self.require_length()
        body = self.body
        # Put Block List: Content-MD5 / x-ms-content-crc64 are of the request content (the XML),
        # "not ... the content of the blob itself"; x-ms-blob-content-md5 is stored, not checked.
        echo = self.check_transactional_hashes(body)
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise AzureError(400, "InvalidXmlDocument", "XML specified is not syntactically valid.")
        if root.tag != "BlockList":
            raise AzureError(400, "InvalidXmlDocument", "XML specified is not syntactically valid.")
        wanted = []
        for el in root:
            if el.tag not in ("Committed", "Uncommitted", "Latest"):
                raise AzureError(400, "InvalidXmlNodeValue", "The value for one of the XML nodes is not in the correct format.")
            wanted.append((el.tag, (el.text or "").strip()))
        if len(wanted) > 50000:
            raise AzureError(400, "BlockListTooLong", "The block list may not contain more than 50,000 blocks.")
        with self.server.store.lock:
            c = self.get_container(cname)
            until, mode = self.parse_policy_headers(c, required=False)
            legal_hold = self.parse_legal_hold_header(c, required=False, minimum=IMMUTABILITY_VERSION)
            entry = c.blobs.get(blob)
            current = entry.current if entry else None
            self.check_write_conditions(current)
            committed = dict(current.committed_blocks) if current else {}
            uncommitted = entry.uncommitted if entry else {}
            blocks = []
            for kind, bid in wanted:
                # "If the block is not found in the committed (uncommitted) block list ... the Blob
                # service will return status code 400 (Bad Request)" (code: Blob service error codes,
                # InvalidBlockList).
                if kind == "Committed":
                    data = committed.get(bid)
                elif kind == "Uncommitted":
                    data = uncommitted.get(bid)
                else:
                    data = uncommitted.get(bid, committed.get(bid))
                if data is None:
                    raise AzureError(400, "InvalidBlockList", "The specified block list is invalid.")
                blocks.append((bid, data))
            v = Version(b"".join(d for _, d in blocks), now_utc())
            v.committed_blocks = blocks
            self.blob_properties_from_request(v, put_blob=False)
            # List Blobs: "Blob Storage doesn't calculate [Content-MD5] when you create a blob by
            # using Put Block List"; x-ms-blob-content-md5 sets it.
            v.content_md5 = self.header("x-ms-blob-content-md5")
            v.content_crc64 = crc64_b64(v.data) if len(v.data) <= CRC64_RESPONSE_LIMIT else None
            v.policy_until, v.policy_mode, v.legal_hold = until, mode, legal_hold
            entry = self.commit_version(c, blob, entry, v)
            h = {"ETag": '"%s"' % v.etag, "Last-Modified": rfc1123(v.last_modified),
                 "x-ms-request-server-encrypted": "true"}
            h.update(echo)
            h.update(self.version_headers(c, v, entry))
        self.send(201, h)

    # ---------------------------------------------------------------- blob reads

    def op_get_blob(self, cname, blob):
        with self.server.store.lock:
            c = self.get_container(cname)
            entry, v = self.find_version(c, blob)
            status = self.read_conditions_status(v)
            data = v.data
            h = {
                "Last-Modified": rfc1123(v.last_modified),
                "x-ms-creation-time": rfc1123(v.created),
                "ETag": '"%s"' % v.etag,
                "Content-Type": v.content_type,
                "Accept-Ranges": "bytes",
                "x-ms-blob-type": "BlockBlob",
                "x-ms-lease-status": "unlocked",
                "x-ms-lease-state": "available",
                "x-ms-server-encrypted": "true",
            }
            for k, val in (("Content-Encoding", v.content_encoding), ("Content-Language", v.content_language),
                           ("Cache-Control", v.cache_control), ("Content-Disposition", v.content_disposition)):
                if val is not None:
                    h[k] = val
            for k, val in v.metadata.items():
                h["x-ms-meta-" + k] = val
            h.update(self.version_headers(c, v, entry))
            if c.worm:
                h["x-ms-is-current-version"] = "true" if v is entry.current else "false"
            h.update(self.immutability_headers(v))
            if self.is_head:  # Get Blob Properties
                h["x-ms-access-tier"] = "Hot"
                h["x-ms-access-tier-inferred"] = "true"
        if status == 412:
            raise AzureError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
        if status == 304:
            self.send(304, {k: h[k] for k in ("ETag", "Last-Modified")})
            return

        size = len(data)
        rng_text = self.header("x-ms-range")
        rng_header = "x-ms-range"
        if rng_text is None:  # "If both Range and x-ms-range are specified, the service uses ... x-ms-range"
            rng_text, rng_header = self.header("Range"), "Range"
        want_md5 = (self.header("x-ms-range-get-content-md5") or "").lower() == "true"
        want_crc = (self.header("x-ms-range-get-content-crc64") or "").lower() == "true"
        if (want_md5 or want_crc) and rng_text is None:
            raise AzureError(400, "InvalidHeaderValue", "x-ms-range-get-content-md5/crc64 needs a range.",
                             {"HeaderName": "x-ms-range-get-content-md5" if want_md5 else "x-ms-range-get-content-crc64"})
        if want_md5 and want_crc:
            raise AzureError(400, "InvalidHeaderValue", "x-ms-range-get-content-md5 and x-ms-range-get-content-crc64 cannot both be set.",
                             {"HeaderName": "x-ms-range-get-content-crc64"})

        if rng_text is None:
            if v.content_md5 is not None:  # "If the blob has an MD5 hash and this Get Blob ... reads the full blob"
                h["Content-MD5"] = v.content_md5
            self.send(200, h, data if not self.is_head else b"", content_length=size)
            return

        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng_text.strip())
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            # NOT FROM THE DOCS: the range page gives only the two accepted forms.
            raise AzureError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                             {"HeaderName": rng_header, "HeaderValue": rng_text})
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        # Range page: "If the offset is invalid and exceeds the blob's total length, the request
        # will return status code 416"; Common error codes: InvalidRange (416).
        if start >= size:
            raise AzureError(416, "InvalidRange", "The range specified is invalid for the current size of the resource.",
                             headers={"Content-Range": "bytes */%d" % size})
        end = min(end, size - 1)
        part = data[start:end + 1]
        h["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
        if want_md5 or want_crc:
            if len(part) > 4 * 1024 * 1024:
                raise AzureError(400, "OutOfRangeInput", "The range for a transactional hash may not exceed 4 MiB.")
            if want_md5:
                h["Content-MD5"] = md5_b64(part)
            else:
                h["x-ms-content-crc64"] = crc64_b64(part)
        self.send(206, h, part if not self.is_head else b"", content_length=len(part))

    # ---------------------------------------------------------------- delete

    def op_delete_blob(self, cname, blob):
        with self.server.store.lock:
            c = self.get_container(cname)
            entry = c.blobs.get(blob)
            vid = self.q("versionid")
            if entry is None:
                raise AzureError(404, "BlobNotFound", "The specified blob does not exist.")
            if vid is None and entry.current is None and entry.uncommitted and not entry.versions:
                # "the client may call Delete Blob to delete uncommitted blobs"
                del c.blobs[blob]
                self.send(202, {"x-ms-delete-type-permanent": "true"})
                return
            entry, v = self.find_version(c, blob)
            self.check_write_conditions(v)
            now = now_utc()
            # Blob service error codes: BlobImmutableDueToPolicy (409) "This operation is not
            # permitted as the blob is immutable due to a policy"; BlobImmutableDueToLegalHold (409)
            # "... immutable due to one or more legal holds". Refusing Delete Blob on a protected
            # *current* version (rather than turning it into a previous version) is what the real
            # service does (kopia's tests against Azure: BlobImmutableDueToPolicy) -- NOT spelled
            # out in the docs, which only say versions are retained.
            if v.policy_active(now):
                raise AzureError(409, "BlobImmutableDueToPolicy", "This operation is not permitted as the blob is immutable due to a policy.")
            if v.legal_hold:
                raise AzureError(409, "BlobImmutableDueToLegalHold", "This operation is not permitted as the blob is immutable due to one or more legal holds.")
            if vid is not None or not c.worm:
                entry.versions = [x for x in entry.versions if x is not v]
                if entry.current is v:
                    entry.current = None
                permanent = "true" if not c.worm else "false"
            else:
                # Versioning: "When you delete a blob, the current version of the blob becomes a
                # previous version, and there's no longer a current version."
                entry.current = None
                permanent = "false"
            if entry.current is None and not entry.versions and not entry.uncommitted:
                del c.blobs[blob]
        self.send(202, {"x-ms-delete-type-permanent": permanent})

    # ---------------------------------------------------------------- immutability

    def op_set_policy(self, cname, blob):
        self.need_version(IMMUTABILITY_VERSION, "Set Blob Immutability Policy")
        with self.server.store.lock:
            c = self.get_container(cname)
            entry, v = self.find_version(c, blob)
            until, mode = self.parse_policy_headers(c, required=True)
            self.check_write_conditions(v)
            if v.policy_mode == "locked" and v.policy_until is not None:
                # Set Blob Immutability Policy, Remarks: "When immutability policy in locked mode,
                # user can only extend the retention until date. Immutability policy mode can be set
                # from unlocked to locked, but not the reverse." The pages give no error code for a
                # refusal; BlobImmutableDueToPolicy (409) is used -- NOT FROM THE DOCS.
                if mode != "locked":
                    raise AzureError(409, "BlobImmutableDueToPolicy", "This operation is not permitted as the blob is immutable due to a policy.",
                                     {"Reason": "A locked immutability policy cannot be changed to unlocked."})
                if until < v.policy_until:
                    raise AzureError(409, "BlobImmutableDueToPolicy", "This operation is not permitted as the blob is immutable due to a policy.",
                                     {"Reason": "The retention until date of a locked immutability policy can only be extended."})
            # Unlocked (or none): "user can update the retention until date" either way, or lock it.
            # "This operation doesn't update the blob's ETag."
            v.policy_until, v.policy_mode = until, mode
            h = {"x-ms-immutability-policy-until-date": rfc1123(until), "x-ms-immutability-policy-mode": mode}
        self.send(200, h)

    def op_delete_policy(self, cname, blob):
        self.need_version(IMMUTABILITY_VERSION, "Delete Blob Immutability Policy")
        with self.server.store.lock:
            c = self.get_container(cname)
            entry, v = self.find_version(c, blob)
            self.require_worm(c)
            self.check_write_conditions(v)
            # Delete Blob Immutability Policy, Remarks: "The immutability policy must be in unlocked
            # mode to be deleted." Code and status NOT FROM THE DOCS: the real service answers
            # ImmutabilityPolicyDeleteOnLockedPolicy (kopia's Azure tests; azure-sdk-for-go's
            # bloberror list); 409 is assumed for the status.
            if v.policy_mode == "locked":
                raise AzureError(409, "ImmutabilityPolicyDeleteOnLockedPolicy",
                                 "This operation is not permitted as the immutability policy is locked.")
            v.policy_until, v.policy_mode = None, None
        self.send(200, {})

    def op_set_legal_hold(self, cname, blob):
        self.need_version(LEGAL_HOLD_API_VERSION, "Set Blob Legal Hold")
        with self.server.store.lock:
            c = self.get_container(cname)
            entry, v = self.find_version(c, blob)
            hold = self.parse_legal_hold_header(c, required=True, minimum=LEGAL_HOLD_API_VERSION)
            v.legal_hold = hold  # "This operation doesn't update the blob's ETag."
        self.send(200, {"x-ms-legal-hold": "true" if hold else "false"})


# --------------------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    ap = argparse.ArgumentParser(description="Azure Blob Storage test double (immutability-aware). Not Azure.")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--account", default=AZURITE_ACCOUNT, help="storage account name (default: Azurite's devstoreaccount1)")
    ap.add_argument("--key", default=AZURITE_KEY, help="base64 account key (default: Azurite's well-known key)")
    ap.add_argument("--no-worm", action="store_true",
                    help="containers without version-level immutability (x-ms-immutable-storage-with-versioning-enabled: false)")
    ap.add_argument("--if-none-match-conflict", type=int, choices=(409, 412), default=412,
                    help="answer to If-None-Match: * on an existing blob: 412 ConditionNotMet (the conditional-headers "
                         "page, default) or 409 BlobAlreadyExists (the error-codes page's code), to test a client takes both")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    opts = ap.parse_args(argv)
    try:
        opts.key_bytes = base64.b64decode(opts.key, validate=True)
    except (binascii.Error, ValueError):
        ap.error("--key is not base64")

    server = Server(("127.0.0.1", opts.port), Handler)
    server.options = opts
    server.store = Store()
    host, port = server.server_address[:2]
    sys.stdout.write("listening %s:%d\n" % (host, port))
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
