"""Integrity of a model bundle: one digest over the whole manifest, and an optional HMAC-SHA256 signature.

The manifest lists the sha256 of every other file of the bundle, so a digest of the manifest covers the whole
bundle. It is stored in the manifest itself, under `integrity`::

    "integrity": {
      "algorithm": "sha256",
      "sections": {"calibration": "<sha256>", "files": "<sha256>", ...},  one per top-level manifest key
      "digest": "<sha256 of the canonical JSON of `sections`>",
      "signature": {"algorithm": "hmac-sha256", "key_id": "<8 hex>", "value": "<hex>"}   only when signed
    }

Canonical JSON is `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` in UTF-8. One
hash per section lets a refusal name what was edited ("calibration"), not only that something was.

The digest stops silent edits (a hand-edited threshold, a half-copied bundle); anyone who can write the file can
also recompute it. The signature stops deliberate ones: it needs the site's key, read from `AE_MONITOR_BUNDLE_KEY`
(or the file named by `AE_MONITOR_BUNDLE_KEY_FILE`). When a key is set, unsigned and wrongly signed bundles are
refused; when none is set, a signature is not checked (a warning says so) and bundles written before digests
existed load with a warning. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ae_monitor.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

KEY_ENV = "AE_MONITOR_BUNDLE_KEY"
KEY_FILE_ENV = "AE_MONITOR_BUNDLE_KEY_FILE"
MIN_KEY_BYTES = 16
FIELD = "integrity"
SIGNATURE_ALGORITHM = "hmac-sha256"
# Domain separation: a signature over a bundle digest can never be mistaken for another use of the same key.
_SIGNED_PREFIX = b"ae-monitor bundle digest v1\n"
_REBUILD = "restore the bundle from where it was built, or rebuild it (`ae-monitor train`, `ae-monitor calibrate`)"


@dataclass(frozen=True)
class Seal:
    """What the integrity check found: `signed` (digest and signature verified), `sealed` (digest verified, no
    signature checked: none, or no key to check it) or `unsealed` (a bundle written before digests existed).
    `signer` is the key id the bundle says signed it, verified only when `state` is `signed`."""

    state: Literal["signed", "sealed", "unsealed"]
    digest: str | None = None
    signer: str | None = None


def signing_key(environ: Mapping[str, str]) -> bytes | None:
    """The site's bundle key from `environ`, or None when neither variable is set.

    >>> signing_key({}) is None
    True
    >>> len(signing_key({"AE_MONITOR_BUNDLE_KEY": "0123456789abcdef0123"}))
    20
    """
    value, file = environ.get(KEY_ENV), environ.get(KEY_FILE_ENV)
    if value is not None and file is not None:
        raise ConfigError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both", key=KEY_ENV)
    if file is not None:
        try:
            key = Path(file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read the bundle key file: {exc}", key=KEY_FILE_ENV) from exc
        return _checked(key, KEY_FILE_ENV)
    # A trailing newline is never part of the key: a Kubernetes Secret made from `openssl rand -hex 32 > key` has one.
    return None if value is None else _checked(value.encode("utf-8").rstrip(b"\r\n"), KEY_ENV)


def _checked(key: bytes, name: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the bundle key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random ones (`openssl rand -hex 32`)",
            key=name,
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name for a key, so a refusal can say which key signed a bundle (rotation)."""
    return hashlib.sha256(key).hexdigest()[:8]


def seal(manifest: Mapping[str, Any], *, key: bytes | None) -> dict[str, Any]:
    """`manifest` in its JSON form with an `integrity` record added (replacing any earlier one); signed with `key`."""
    content = _content(_normalized(manifest))
    sections = _sections(content)
    record: dict[str, Any] = {"algorithm": "sha256", "sections": sections, "digest": _digest(sections)}
    if key is not None:
        record["signature"] = {"algorithm": SIGNATURE_ALGORITHM, "key_id": key_id(key),
                               "value": _sign(key, record["digest"])}  # fmt: skip
    return {**content, FIELD: record}


def verify(manifest: Mapping[str, Any], *, key: bytes | None) -> Seal:
    """Check the digest (and, when `key` is given, the signature) of a manifest as read from disk.

    Raises BundleError naming the manifest section that changed since the bundle was written.
    """
    if manifest.get(FIELD) is None:
        if key is not None:
            raise BundleError(
                f"the bundle has no digest or signature and {KEY_ENV} is set, so only signed bundles load; "
                "check it and sign it with `ae-monitor bundle sign`, or rebuild it",
                field=FIELD,
            )
        return Seal("unsealed")
    digest, signature = _verified_digest(manifest)
    signer = None if signature is None else str(signature.get("key_id"))
    if key is None:
        return Seal("sealed", digest, signer)
    _check_signature(signature, key, digest)
    return Seal("signed", digest, key_id(key))


def warn_unchecked(found: Seal, *, where: object) -> None:
    """Log what a load could not check: a bundle without a digest, or a signature without a key to check it."""
    if found.state == "unsealed":
        log.warning("bundle %s has no digest (written before ae_monitor sealed bundles): it loads unverified; "
                    "`ae-monitor bundle sign` adds one", where)  # fmt: skip
    elif found.state == "sealed" and found.signer is not None:
        log.warning("bundle %s is signed but %s is not set: its signature is not checked", where, KEY_ENV)


def reseal(manifest: Mapping[str, Any], *, key: bytes | None) -> dict[str, Any]:
    """`manifest` sealed again (and signed with `key`): a bundle written before digests existed gets its first one;
    a sealed bundle must still match its digest, so a modified bundle is never blessed after the fact."""
    if manifest.get(FIELD) is not None:
        _, signature = _verified_digest(manifest)
        if signature is not None and key is None:
            raise BundleError(f"the bundle is signed; set {KEY_ENV} to sign it again (without it the signature "
                              "would be dropped)", field=f"{FIELD}.signature")  # fmt: skip
    return seal(manifest, key=key)


def _verified_digest(manifest: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    sections, digest, signature = _parts(manifest[FIELD])
    _compare_sections(_sections(_content(manifest)), sections)
    if _digest(sections) != digest:
        raise BundleError(f"the recorded digest does not match its sections; {_REBUILD}", field=f"{FIELD}.digest")
    return digest, signature


def _parts(record: Any) -> tuple[dict[str, str], str, Mapping[str, Any] | None]:
    if not (isinstance(record, dict) and record.get("algorithm") == "sha256"):
        raise BundleError("expected an object with algorithm 'sha256'", field=FIELD)
    sections, digest, signature = record.get("sections"), record.get("digest"), record.get("signature")
    if not (isinstance(sections, dict) and all(isinstance(v, str) for v in sections.values())):
        raise BundleError("expected an object of sha256 hex digests", field=f"{FIELD}.sections")
    if not isinstance(digest, str):
        raise BundleError("expected a sha256 hex digest", field=f"{FIELD}.digest")
    if signature is not None and not isinstance(signature, dict):
        raise BundleError("expected an object", field=f"{FIELD}.signature")
    return sections, digest, signature


def _compare_sections(actual: Mapping[str, str], recorded: Mapping[str, str]) -> None:
    for name in sorted(set(actual) | set(recorded)):
        if name not in recorded:
            change = "added to"
        elif name not in actual:
            change = "removed from"
        elif actual[name] != recorded[name]:
            change = "modified in"
        else:
            continue
        raise BundleError(f"{change} manifest.json after the bundle was written (it no longer matches the bundle's "
                          f"digest), so the bundle is refused; {_REBUILD}", field=name)  # fmt: skip


def _check_signature(signature: Mapping[str, Any] | None, key: bytes, digest: str) -> None:
    if signature is None:
        raise BundleError(f"the bundle is not signed and {KEY_ENV} is set, so only signed bundles load; sign it "
                          "with `ae-monitor bundle sign` where the key is kept, or rebuild it there",
                          field=f"{FIELD}.signature")  # fmt: skip
    if signature.get("algorithm") != SIGNATURE_ALGORITHM:
        raise BundleError(f"unsupported algorithm {signature.get('algorithm')!r}; this ae_monitor checks "
                          f"{SIGNATURE_ALGORITHM}", field=f"{FIELD}.signature.algorithm")  # fmt: skip
    value = signature.get("value")
    if not (isinstance(value, str) and hmac.compare_digest(value.encode(), _sign(key, digest).encode())):
        signer, mine = signature.get("key_id"), key_id(key)
        if signer == mine:
            cause = f"the bundle changed after it was signed with key id {mine}; {_REBUILD}"
        else:
            cause = (
                f"it says key id {signer} signed it and {KEY_ENV} is key id {mine}; set the key it was signed "
                "with, or sign it again with this one (`ae-monitor bundle sign`) only if you trust its content"
            )
        raise BundleError(f"the signature does not match: {cause}", field=f"{FIELD}.signature")


def _normalized(manifest: Mapping[str, Any]) -> dict[str, Any]:
    # What json.loads gives back for this manifest (tuples as lists, keys as strings): hash what is read on load.
    normalized: dict[str, Any] = json.loads(json.dumps(manifest))
    return normalized


def _content(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != FIELD}


def _sections(content: Mapping[str, Any]) -> dict[str, str]:
    return {name: hashlib.sha256(_canonical(value)).hexdigest() for name, value in content.items()}


def _digest(sections: Mapping[str, str]) -> str:
    return hashlib.sha256(_canonical(sections)).hexdigest()


def _sign(key: bytes, digest: str) -> str:
    return hmac.new(key, _SIGNED_PREFIX + digest.encode("ascii"), hashlib.sha256).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
