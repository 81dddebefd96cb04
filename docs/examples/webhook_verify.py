#!/usr/bin/env python3
"""Verify a Synod webhook notification, as a receiver must, with Python's `cryptography`.

A notification is a POST signed with RFC 9421 HTTP message signatures by the key of the sending
node's certificate, which travels in the `Synod-Node-Certificate` header. `verify` checks that
the certificate was issued by the cluster CA and is valid now, that the signature's `keyid` is
that key's RFC 7638 thumbprint, that the body matches `Content-Digest` (RFC 9530), that the
signature over the rebuilt signature base verifies, that it is recent, and that the body's `id`
is the `Idempotency-Key`. It returns the payload; drop it if you have seen its `id` before (a new
leader may send a notification again). docs/webhooks.md explains each step.

As a library:  payload = verify("POST", "https://hooks.example.com/synod", headers, body, ca_pem)
As a command:  python3 webhook_verify.py --ca ca.crt --target-uri URI --headers FILE --body FILE
               (FILE of headers: one `Name: value` per line). Prints the payload as JSON, or
               exits non-zero saying why the notification is refused.
"""

import argparse
import base64
import hashlib
import json
import sys
import time
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

#: The components every Synod notification covers, in order.
COVERED = ("@method", "@target-uri", "content-type", "content-digest", "idempotency-key")
#: How old a signature may be, in seconds (the `created` parameter); retries are signed afresh.
MAX_AGE_S = 300


class Refused(Exception):
    """The notification is not one the cluster sent."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _thumbprint(raw_key: bytes) -> str:
    """RFC 7638 thumbprint of an Ed25519 key as a JWK (RFC 8037)."""
    jwk = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % _b64url(raw_key)
    return _b64url(hashlib.sha256(jwk.encode()).digest())


def _node_key(certificate_b64: str, ca_pem: bytes):
    """The public key of a node certificate the cluster CA issued, valid now."""
    cert = x509.load_der_x509_certificate(base64.b64decode(certificate_b64))
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as e:  # a wrong issuer name or a bad signature
        raise Refused(f"the node certificate was not issued by the cluster CA: {e}") from e
    now = datetime.now(timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Refused("the node certificate is not valid now")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not str(names[0].value).startswith("synod-node-"):
        raise Refused("the certificate is not a Synod node certificate (CN synod-node-<id>)")
    return cert.public_key()


def verify(method: str, target_uri: str, headers: dict, body: bytes, ca_pem: bytes) -> dict:
    """The payload of a notification, once every check passed; raises Refused otherwise.

    `target_uri` is the URL exactly as the webhook was set (the cluster stores it normalised, as
    `synod webhook list -o json` hashes it); `headers` maps names (any case) to values. Malformed
    input of any kind (a header that does not parse, a body that is not JSON) is refused too.
    """
    try:
        return _verify(method, target_uri, headers, body, ca_pem)
    except Refused:
        raise
    except Exception as e:  # ValueError, IndexError, binascii.Error, UnicodeError, ...
        raise Refused(f"the notification is malformed: {type(e).__name__}: {e}") from e


def _verify(method: str, target_uri: str, headers: dict, body: bytes, ca_pem: bytes) -> dict:
    h = {k.lower(): v.strip() for k, v in headers.items()}
    for name in ("synod-node-certificate", "signature-input", "signature", "content-digest",
                 "content-type", "idempotency-key"):
        if name not in h:
            raise Refused(f"no {name} header")
    key = _node_key(h["synod-node-certificate"], ca_pem)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    digest = "sha-256=:%s:" % base64.b64encode(hashlib.sha256(body).digest()).decode()
    if h["content-digest"] != digest:
        raise Refused("the body does not match Content-Digest")

    label, _, params = h["signature-input"].partition("=")
    if label != "synod":
        raise Refused("Signature-Input has no synod signature")
    listed = params[params.index("(") + 1:params.index(")")].split(" ")
    if tuple(n.strip('"') for n in listed) != COVERED:
        raise Refused(f"the signature covers {listed}, not {COVERED}")
    fields = dict(p.split("=", 1) for p in params[params.index(")") + 1:].split(";") if p)
    if fields.get("alg") != '"ed25519"' or fields.get("keyid") != '"%s"' % _thumbprint(raw):
        raise Refused("the signature's keyid or alg does not name the certificate's Ed25519 key")
    if abs(time.time() - int(fields.get("created", "0"))) > MAX_AGE_S:
        raise Refused("the signature is too old (replayed?)")

    values = (method.upper(), target_uri, h["content-type"], h["content-digest"], h["idempotency-key"])
    base = "".join('"%s": %s\n' % (n, v) for n, v in zip(COVERED, values))
    base += '"@signature-params": ' + params
    signature = h["signature"]
    if not (signature.startswith("synod=:") and signature.endswith(":")):
        raise Refused("Signature is not synod=:BASE64:")
    try:
        key.verify(base64.b64decode(signature[len("synod=:"):-1]), base.encode())
    except Exception as e:
        raise Refused("the signature does not verify") from e

    payload = json.loads(body)
    if not isinstance(payload, dict) or payload.get("id") != h["idempotency-key"]:
        raise Refused("the body's id is not the Idempotency-Key")
    return payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ca", required=True, help="the cluster CA certificate (PEM)")
    parser.add_argument("--target-uri", required=True, help="the webhook's URL")
    parser.add_argument("--headers", required=True, help="a file of `Name: value` lines")
    parser.add_argument("--body", required=True, help="the body as received")
    args = parser.parse_args()
    with open(args.headers) as f:
        headers = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    with open(args.ca, "rb") as f:
        ca = f.read()
    with open(args.body, "rb") as f:
        body = f.read()
    try:
        print(json.dumps(verify("POST", args.target_uri, headers, body, ca)))
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
