#!/usr/bin/env python3
"""Ask a Synod cluster for a signature, from Python, without the synod CLI.

Builds a `sign_request` command, signs its envelope with an operator key (PKCS#8 PEM), submits
it over HTTPS with a client certificate, waits for the result (signing each read of the request
with the same operator key), and verifies the signature under the key's public key. It uses only
`cryptography` and `requests`. docs/api.md explains every step.

    SYNOD_ADDR=https://127.0.0.1:8201 SYNOD_CACERT=ca.crt \\
    SYNOD_CLIENT_CERT=client.crt SYNOD_CLIENT_KEY=client.key SYNOD_OPERATOR_KEY=alice.pem \\
        python3 sign.py --key demo --message 'release 1.0'

It prints one JSON object: the request id, the key's public key, the message (hex) and the
signature (hex, 64 bytes, RFC 8032 Ed25519). It exits non-zero, saying why, when the cluster
refuses, the request needs approvals, or the signature does not verify.
"""

import argparse
import json
import os
import struct
import sys
import time
from urllib.parse import urlsplit

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# What the operator key signs for a command: this tag, then the envelope's exact bytes.
COMMAND_DOMAIN = b"synod/command/v1\x00"
# What the operator key signs for a read: this tag, then the fields of read_signing_bytes().
READ_DOMAIN = b"synod/read/v1\x00"
READ_SIGNATURE_HEADER = "synod-read-signature"
# How long the command stays valid (the cluster accepts at most 24 h).
COMMAND_TTL_MS = 10 * 60 * 1000
# How long one call asks the node to wait for the signature (the node waits at most 120 s).
WAIT_MS = 30_000
# How long this script waits in all before it gives up.
DEADLINE_S = 300
# How many times a write is sent again after a 421 or a 503 (the same signed bytes each time).
RESENDS_MAX = 5


def now_ms():
    return int(time.time() * 1000)


def fail(message):
    print(f"sign.py: {message}", file=sys.stderr)
    sys.exit(1)


def load_operator_key(path):
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        fail(f"{path} is not an Ed25519 key; operator keys are (synod operator keygen)")
    return key


def public_hex(key):
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def read_signing_bytes(cluster_id, method, path_and_query, signed_at_ms, key_raw):
    """proto/src/readsig.rs: the tag, each text field as a 4-byte big-endian length and its
    UTF-8 bytes, the time as 8 bytes big-endian, then the 32-byte public key."""
    out = bytearray(READ_DOMAIN)
    for field in (cluster_id, method, path_and_query):
        data = field.encode("utf-8")
        out += struct.pack(">I", len(data)) + data
    out += struct.pack(">Q", signed_at_ms)
    out += key_raw
    return bytes(out)


def read_signature(key, cluster_id, method, path_and_query):
    """The synod-read-signature header for one read: sign each read afresh (good for 60 s)."""
    created = now_ms()
    key_raw = bytes.fromhex(public_hex(key))
    sig = key.sign(read_signing_bytes(cluster_id, method, path_and_query, created, key_raw))
    return f"v1;key={key_raw.hex()};created={created};sig={sig.hex()}"


def sign_command(key, envelope):
    """A SignedCommand: the envelope's JSON text exactly as signed, its author and signature.
    The node verifies the signature over these bytes before it parses them, so any valid JSON
    spelling of the envelope works; what matters is sending the very text that was signed."""
    text = json.dumps(envelope, separators=(",", ":"))
    signature = key.sign(COMMAND_DOMAIN + text.encode("utf-8"))
    return {"envelope": text, "author": public_hex(key), "signature": signature.hex()}


class Node:
    """HTTPS calls that trust the cluster CA only and present the client certificate. Both are
    passed on every call: requests lets REQUESTS_CA_BUNDLE override a session's `verify`, and
    the node's certificate chains to the cluster CA, not to a public one."""

    def __init__(self, cacert, client_cert, client_key):
        self.tls = {"verify": cacert, "cert": (client_cert, client_key)}
        self.session = requests.Session()

    def get(self, url, **kwargs):
        return self.session.get(url, **self.tls, **kwargs)

    def post(self, url, **kwargs):
        return self.session.post(url, **self.tls, **kwargs)


def errors_of(response):
    try:
        return "; ".join(response.json().get("errors", [])) or response.text
    except ValueError:
        return response.text


def submit(node, base, signed, request_id, wait_ms):
    """POST /v1/sign, following the leader hint of a 421 and sending the same bytes again after
    a 503 (a command id applies at most once, so a resend never signs twice)."""
    target = f"{base}/v1/sign?wait_ms={wait_ms}"
    for _ in range(RESENDS_MAX + 1):
        response = node.post(target, json=signed, timeout=wait_ms / 1000 + 30)
        if response.status_code == 421:
            leader = response.json()["leader"]
            target = f"https://{leader['api_addr']}/v1/sign?wait_ms={wait_ms}"
            continue
        # A 503 that names the request failed is its answer; any other 503 is "not now".
        if response.status_code == 503 and f"request {request_id} failed" not in errors_of(response):
            time.sleep(1)
            continue
        return response
    fail(f"the cluster did not take the request after {RESENDS_MAX} resends: {errors_of(response)}")


def read_request(node, base, key, cluster_id, request_id, wait_ms):
    """GET /v1/requests/{id}, signed by the operator key (its requester may read it), waiting
    up to wait_ms while it is open."""
    path = f"/v1/requests/{request_id}?wait_ms={wait_ms}"
    headers = {READ_SIGNATURE_HEADER: read_signature(key, cluster_id, "GET", path)}
    response = node.get(base + path, headers=headers, timeout=wait_ms / 1000 + 30)
    if response.status_code != 200:
        fail(f"reading request {request_id}: HTTP {response.status_code}: {errors_of(response)}")
    return response.json()


def wait_signed(node, base, key, cluster_id, request_id):
    """Reads the request until it is signed or failed."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        info = read_request(node, base, key, cluster_id, request_id, WAIT_MS)
        if info["status"] == "signed":
            return info
        if info["status"] == "failed":
            fail(f"request {request_id} failed: {info.get('error')}")
        if info["status"] == "awaiting_approval":
            fail(f"request {request_id} needs approvals: {'; '.join(info['approval_progress'])}")
    fail(f"request {request_id} was not signed within {DEADLINE_S} s")


def main():
    parser = argparse.ArgumentParser(description="Ask a Synod cluster for a signature.")
    parser.add_argument("--key", required=True, help="the signing key's name")
    parser.add_argument("--message", required=True, help="the message to sign (UTF-8 text)")
    parser.add_argument("--request-id", default=None, help="1 to 64 of A-Z a-z 0-9 . _ - (default: random)")
    parser.add_argument("--purpose", default="", help="the purpose the key's policy may require")
    parser.add_argument("--wait-ms", type=int, default=WAIT_MS,
                        help="how long the submission waits for the signature before this script polls")
    args = parser.parse_args()

    env = {name: os.environ.get(name) for name in
           ("SYNOD_ADDR", "SYNOD_CACERT", "SYNOD_CLIENT_CERT", "SYNOD_CLIENT_KEY", "SYNOD_OPERATOR_KEY")}
    missing = [name for name, value in env.items() if not value]
    if missing:
        fail(f"set {', '.join(missing)} (see the docstring)")
    base = env["SYNOD_ADDR"].rstrip("/")
    if urlsplit(base).scheme != "https":
        fail(f"SYNOD_ADDR {base} is not an https:// address")

    key = load_operator_key(env["SYNOD_OPERATOR_KEY"])
    node = Node(env["SYNOD_CACERT"], env["SYNOD_CLIENT_CERT"], env["SYNOD_CLIENT_KEY"])

    # The cluster id every command names: health needs no signature and tells it.
    health = node.get(f"{base}/v1/sys/health?standbyok=true", timeout=30).json()
    cluster_id = health.get("cluster_id")
    if not cluster_id:
        fail("the node is not initialised (its health has no cluster_id)")

    message = args.message.encode("utf-8")
    request_id = args.request_id or os.urandom(16).hex()
    issued = now_ms()
    envelope = {
        "cluster_id": cluster_id,
        "command_id": os.urandom(16).hex(),
        "issued_at_ms": issued,
        "expires_at_ms": issued + COMMAND_TTL_MS,
        "command": {
            "type": "sign_request",
            "request_id": request_id,
            "key": args.key,
            "message": message.hex(),
            "purpose": args.purpose,
        },
    }
    response = submit(node, base, sign_command(key, envelope), request_id, args.wait_ms)
    if response.status_code == 200:
        info = response.json()
    elif response.status_code == 202:
        info = wait_signed(node, base, key, cluster_id, request_id)
    else:
        fail(f"HTTP {response.status_code}: {errors_of(response)}")

    # The request as the cluster records it, read as its requester: the same signature.
    recorded = read_request(node, base, key, cluster_id, request_id, 0)
    if recorded.get("signature") != info["signature"]:
        fail(f"request {request_id} reads back with another signature: {recorded.get('signature')}")

    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(info["public_key"]))
    signature = bytes.fromhex(info["signature"])
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        fail(f"the signature of request {request_id} does not verify under {info['public_key']}")
    print(json.dumps({
        "request_id": request_id,
        "public_key": info["public_key"],
        "message": message.hex(),
        "signature": info["signature"],
    }))


if __name__ == "__main__":
    main()
