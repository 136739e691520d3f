"""Bundles cannot be silently edited: a digest covers the manifest and every file, a site key signs them, and they
are written readable by the daemon's user."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ae_monitor.errors import BundleError, ConfigError
from ae_monitor.model.bundle import MANIFEST, check_bundle, load_bundle, save_bundle, sign_bundle
from ae_monitor.model.integrity import KEY_ENV, KEY_FILE_ENV, Seal, key_id, seal, signing_key

KEY = "site-key-0123456789abcdef"
OTHER_KEY = "another-key-0123456789abcdef"


@pytest.fixture(scope="module")
def unsigned(sensor_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(load_bundle(sensor_bundle, environ={}), tmp_path_factory.mktemp("u") / "pump", environ={})


@pytest.fixture(scope="module")
def signed(sensor_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = {KEY_ENV: KEY}
    return save_bundle(load_bundle(sensor_bundle, environ={}), tmp_path_factory.mktemp("s") / "pump", environ=env)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


def _manifest(bundle: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((bundle / MANIFEST).read_text())
    return manifest


def _write(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _times_100(bundle: Path) -> dict[str, Any]:
    manifest = _manifest(bundle)
    manifest["calibration"]["threshold"] *= 100
    return manifest


def test_a_threshold_multiplied_by_100_in_the_manifest_is_refused_naming_the_calibration(
    unsigned: Path, tmp_path: Path
) -> None:
    bundle = _copy(unsigned, tmp_path)
    _write(bundle, _times_100(bundle))
    with pytest.raises(BundleError, match=r"^calibration: modified in manifest.json after the bundle was written") as e:
        load_bundle(bundle, environ={})
    assert e.value.field == "calibration"
    assert "rebuild it" in str(e.value)


def test_a_field_added_to_or_removed_from_the_manifest_is_refused(unsigned: Path, tmp_path: Path) -> None:
    bundle = _copy(unsigned, tmp_path)
    manifest = _manifest(bundle)
    _write(bundle, {**manifest, "threshold_override": 1e9})
    with pytest.raises(BundleError, match=r"^threshold_override: added to manifest\.json"):
        load_bundle(bundle, environ={})
    del manifest["extra"]
    _write(bundle, manifest)
    with pytest.raises(BundleError, match=r"^extra: removed from manifest\.json"):
        load_bundle(bundle, environ={})


def test_a_section_hash_edited_to_match_the_new_threshold_breaks_the_digest(unsigned: Path, tmp_path: Path) -> None:
    bundle = _copy(unsigned, tmp_path)
    manifest = _times_100(bundle)
    manifest["integrity"]["sections"] = seal(manifest, key=None)["integrity"]["sections"]
    _write(bundle, manifest)
    with pytest.raises(BundleError, match=r"^integrity\.digest: the recorded digest does not match"):
        load_bundle(bundle, environ={})


def test_reformatting_the_manifest_keeps_the_bundle_valid(unsigned: Path, tmp_path: Path) -> None:
    bundle = _copy(unsigned, tmp_path)
    (bundle / MANIFEST).write_text(json.dumps(_manifest(bundle), separators=(",", ":")))  # same content, one line
    assert check_bundle(bundle, environ={}).state == "sealed"


def test_a_bundle_written_before_digests_loads_with_a_warning_when_no_key_is_set(
    unsigned: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = _copy(unsigned, tmp_path)
    legacy = _manifest(bundle)
    del legacy["integrity"]
    _write(bundle, legacy)
    with caplog.at_level(logging.WARNING, logger="ae_monitor.model.integrity"):
        assert load_bundle(bundle, environ={}).calibration is not None
    assert "has no digest" in caplog.text
    assert "loads unverified" in caplog.text
    assert check_bundle(bundle, environ={}).state == "unsealed"
    with pytest.raises(BundleError, match=f"^integrity: the bundle has no digest or signature and {KEY_ENV} is set"):
        load_bundle(bundle, environ={KEY_ENV: KEY})


@pytest.mark.parametrize(
    ("written", "loaded", "outcome"),
    [
        ("unsigned", None, "sealed"),
        ("signed", None, "sealed"),
        ("signed", KEY, "signed"),
        ("unsigned", KEY, "integrity.signature: the bundle is not signed"),
        ("signed", OTHER_KEY, "integrity.signature: the signature does not match"),
    ],
)
def test_signed_and_unsigned_bundles_load_only_as_the_key_allows(
    written: str, loaded: str | None, outcome: str, request: pytest.FixtureRequest
) -> None:
    bundle: Path = request.getfixturevalue(written)
    environ = {} if loaded is None else {KEY_ENV: loaded}
    if ":" not in outcome:
        assert check_bundle(bundle, environ=environ).state == outcome
        load_bundle(bundle, environ=environ)
        return
    with pytest.raises(BundleError, match=f"^{outcome}"):
        load_bundle(bundle, environ=environ)


def test_a_signed_bundle_is_reported_when_no_key_can_check_it(signed: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ae_monitor.model.integrity"):
        load_bundle(signed, environ={})
    assert f"is signed but {KEY_ENV} is not set" in caplog.text
    digest = _manifest(signed)["integrity"]["digest"]
    assert check_bundle(signed, environ={}) == Seal("sealed", digest, signer=key_id(KEY.encode()))


def test_an_edit_with_a_recomputed_digest_is_refused_by_the_signature(signed: Path, tmp_path: Path) -> None:
    bundle = _copy(signed, tmp_path)
    forged = seal(_times_100(bundle), key=None)
    forged["integrity"]["signature"] = _manifest(bundle)["integrity"]["signature"]  # the old signature kept
    _write(bundle, forged)
    assert check_bundle(bundle, environ={}).state == "sealed"  # the digest alone cannot tell
    with pytest.raises(BundleError, match=r"^integrity\.signature: .* the bundle changed after it was signed"):
        load_bundle(bundle, environ={KEY_ENV: KEY})


def test_a_wrong_key_is_named_by_its_key_id_never_by_its_value(signed: Path) -> None:
    with pytest.raises(BundleError) as e:
        load_bundle(signed, environ={KEY_ENV: OTHER_KEY})
    assert f"key id {key_id(KEY.encode())} signed it and {KEY_ENV} is key id {key_id(OTHER_KEY.encode())}" in str(
        e.value
    )
    assert KEY not in str(e.value)
    assert OTHER_KEY not in str(e.value)


def test_signing_an_old_bundle_seals_it_and_a_modified_one_is_never_blessed(unsigned: Path, tmp_path: Path) -> None:
    bundle = _copy(unsigned, tmp_path)
    legacy = _manifest(bundle)
    del legacy["integrity"]
    _write(bundle, legacy)
    assert sign_bundle(bundle, environ={KEY_ENV: KEY}).state == "signed"
    assert check_bundle(bundle, environ={KEY_ENV: KEY}).state == "signed"
    assert sorted(p.name for p in tmp_path.iterdir()) == [bundle.name]  # no staging file left behind
    _write(bundle, _times_100(bundle))
    with pytest.raises(BundleError, match=r"^calibration: modified"):
        sign_bundle(bundle, environ={KEY_ENV: KEY})


def test_signing_again_without_the_key_would_drop_the_signature_and_is_refused(signed: Path, tmp_path: Path) -> None:
    bundle = _copy(signed, tmp_path)
    with pytest.raises(BundleError, match=f"set {KEY_ENV} to sign it again"):
        sign_bundle(bundle, environ={})
    assert sign_bundle(bundle, environ={KEY_ENV: OTHER_KEY}).state == "signed"  # key rotation
    load_bundle(bundle, environ={KEY_ENV: OTHER_KEY})


def test_the_key_is_the_same_from_a_file_or_a_variable_with_or_without_a_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "bundle.key"
    path.write_text(KEY + "\n")
    assert signing_key({KEY_FILE_ENV: str(path)}) == KEY.encode()
    assert signing_key({KEY_ENV: KEY + "\n"}) == KEY.encode()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({KEY_ENV: "short"}, f"{KEY_ENV}: the bundle key is 5 bytes; use at least 16"),
        ({KEY_ENV: ""}, f"{KEY_ENV}: the bundle key is 0 bytes"),
        ({KEY_ENV: KEY, KEY_FILE_ENV: "/x"}, f"set {KEY_ENV} or {KEY_FILE_ENV}, not both"),
        ({KEY_FILE_ENV: "/nonexistent/bundle.key"}, f"{KEY_FILE_ENV}: cannot read the bundle key file"),
    ],
)
def test_an_unusable_key_stops_loading_with_the_variable_named(
    unsigned: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_bundle(unsigned, environ=environ)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(bundle: Path) -> set[tuple[str, int]]:
    modes = {(p.name, stat.S_IMODE(p.stat().st_mode)) for p in bundle.iterdir()}
    return {("/", stat.S_IMODE(bundle.stat().st_mode)), *modes}


@pytest.mark.usefixtures("umask")
def test_bundles_are_readable_by_the_daemons_user_under_the_usual_umask(unsigned: Path, tmp_path: Path) -> None:
    out = save_bundle(load_bundle(unsigned, environ={}), tmp_path / "b", environ={})
    assert {mode for _, mode in _modes(out)} == {0o755, 0o644}
    assert _modes(out) >= {("/", 0o755), (MANIFEST, 0o644)}


@pytest.mark.usefixtures("umask")
def test_a_private_umask_keeps_bundles_private(unsigned: Path, tmp_path: Path) -> None:
    os.umask(0o077)
    out = save_bundle(load_bundle(unsigned, environ={}), tmp_path / "b", environ={})
    assert _modes(out) >= {("/", 0o700), (MANIFEST, 0o600)}
    assert {mode for _, mode in _modes(out)} == {0o700, 0o600}
    assert sign_bundle(out, environ={KEY_ENV: KEY}).state == "signed"
    assert stat.S_IMODE((out / MANIFEST).stat().st_mode) == 0o600
