"""The model bundle: one directory holding the weights and a JSON manifest, so the threshold travels with the model.

Layout::

    <bundle>/
      manifest.json          schema version, name, version, configs, fitted feature statistics, calibration,
                             sha256 of every other file, package and torch versions, and an `integrity` record:
                             a digest of the whole manifest (so of the whole bundle), optionally signed
                             (model/integrity.py)
      weights.safetensors    the network's state_dict (safetensors: no pickle anywhere)
      calibration.safetensors  (optional) the calibration window scores, for live thresholds (DSPOT) and audits
      model.onnx             (optional) the scoring graph for `scoring.backend = "onnx"` (`ae-monitor export
                             --onnx`; model/onnx.py), with an `onnx` manifest record naming the weights it came from

Bundles are written atomically (a temporary sibling directory, then a rename) and verified on load: unknown schema
versions, an edited manifest, checksum mismatches, unexpected files, missing or wrong signatures (when the site sets
a key) and feature configs that differ from the caller's are refused with a message naming the field.

Bundles are written with the permissions the umask allows (0755 directories and 0644 files under the usual 022),
so the service user of the daemon can read a bundle that another user trained; a umask of 077 keeps them private.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays

import ae_monitor
from ae_monitor.config import FeaturesConfig, ModelConfig, TrainingConfig
from ae_monitor.errors import BundleError
from ae_monitor.features import FeatureExtractor, build_extractor
from ae_monitor.model.integrity import FIELD as INTEGRITY
from ae_monitor.model.integrity import Seal, reseal, seal, signing_key, verify, warn_unchecked
from ae_monitor.model.linear import LinearMonitor
from ae_monitor.model.onnx import INPUT, ONNX_FILE, OPSET, OUTPUTS, OnnxNetwork, export_graph, scoring_graph
from ae_monitor.threshold import Calibration

if TYPE_CHECKING:
    # torch is imported where a network is built or saved: a bundle loaded for the onnx backend never needs it.
    from ae_monitor.model.networks import Autoencoder

_S = TypeVar("_S", FeaturesConfig, ModelConfig, TrainingConfig)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
CALIBRATION_SCORES = "calibration.safetensors"
ALLOWED_FILES = {WEIGHTS, CALIBRATION_SCORES, ONNX_FILE}
Backend = Literal["torch", "onnx"]


@dataclass(frozen=True)
class Bundle:
    """A trained model with everything needed to score with it: features, network, calibration.

    `model` is the torch network; a bundle loaded for the onnx backend has `onnx` (its exported scoring graph in
    an onnxruntime session) instead and `model` None."""

    name: str
    version: str
    features: FeaturesConfig
    model_config: ModelConfig
    training: TrainingConfig
    extractor: FeatureExtractor
    model: Autoencoder | None
    calibration: Calibration | None
    extra: Mapping[str, Any]
    calibration_scores: npt.NDArray[np.float64] | None = None
    onnx: OnnxNetwork | None = None

    @property
    def network(self) -> Autoencoder:
        """The torch network; a BundleError when the bundle was loaded for the onnx backend."""
        if self.model is None:
            raise BundleError("the bundle was loaded for scoring.backend 'onnx' and has no torch network; load it "
                              "with the torch backend for this", field=WEIGHTS)  # fmt: skip
        return self.model

    @property
    def threshold(self) -> float:
        if self.calibration is None:
            raise BundleError("the bundle has no calibrated threshold; run `ae-monitor calibrate`", field="calibration")
        return self.calibration.threshold

    def with_calibration(self, calibration: Calibration, scores: npt.ArrayLike | None = None) -> Bundle:
        kept = None if scores is None else np.asarray(scores, dtype=np.float64)
        return replace(self, calibration=calibration, calibration_scores=kept)


def save_bundle(bundle: Bundle, path: str | Path, *, environ: Mapping[str, str] | None = None) -> Path:
    """Write `bundle` to the directory `path` atomically, replacing an existing bundle there.

    The manifest is sealed with a digest, and signed when `environ` (default: the process environment) holds a
    bundle key (`AE_MONITOR_BUNDLE_KEY`)."""
    target = Path(path)
    key = signing_key(os.environ if environ is None else environ)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(target)
    try:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in bundle.network.state_dict().items()}
        save_file(state, str(staging / WEIGHTS))
        if bundle.calibration_scores is not None:
            save_arrays({"scores": np.ascontiguousarray(bundle.calibration_scores)}, str(staging / CALIBRATION_SCORES))
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        _write_manifest(staging / MANIFEST, seal(_manifest(bundle, files), key=key))
        _match_umask(staging)
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def weights_version(model: Autoencoder) -> str:
    """A content hash of the weights: the same trained model always gets the same version."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def load_bundle(
    path: str | Path,
    *,
    expected_features: FeaturesConfig | None = None,
    environ: Mapping[str, str] | None = None,
    backend: Backend = "torch",
    threads: int = 1,
) -> Bundle:
    """Load and verify the bundle at `path`. Raises BundleError naming the field or file at fault.

    When `environ` (default: the process environment) holds a bundle key, only bundles signed with it load.
    `backend` "onnx" loads its `model.onnx` into an onnxruntime session of `threads` threads instead of the torch
    network (torch is not imported); a bundle without one is refused."""
    root = Path(path)
    manifest, found = _verified_manifest(root, environ)
    warn_unchecked(found, where=root)
    features = _section(manifest, "features_config", FeaturesConfig)
    if expected_features is not None:
        _check_features_match(features, expected_features)
    model_config = _section(manifest, "model", ModelConfig)
    vector_shape = _vector_shape(manifest)
    if backend == "onnx":
        model, onnx = None, _load_onnx(root, manifest, threads)
    else:
        model, onnx = _torch_model(root, model_config, vector_shape), None
    return Bundle(
        name=str(manifest.get("name", root.name)),
        version=str(manifest["version"]),
        features=features,
        model_config=model_config,
        training=_section(manifest, "training", TrainingConfig),
        extractor=_extractor(features, manifest),
        model=model,
        calibration=_calibration(manifest, groups=vector_shape[1]),
        extra=manifest.get("extra", {}),
        calibration_scores=_calibration_scores(root, manifest),
        onnx=onnx,
    )


def check_bundle(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Seal:
    """Verify the manifest's digest, the signature (when a key is set) and every file's sha256, without loading the
    model; say how the bundle is sealed (logging nothing). Raises BundleError as `load_bundle` does."""
    return _verified_manifest(Path(path), environ)[1]


def sign_bundle(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Seal:
    """`ae-monitor bundle sign`: seal the bundle at `path` again in place, signed when a key is set.

    Its files must match the manifest and a sealed manifest its digest: only a bundle written before digests
    existed, or one signed with another key, changes; an edited one is refused."""
    root = Path(path)
    env = os.environ if environ is None else environ
    manifest = _read_manifest(root)
    _verify_files(root, manifest)
    sealed = reseal(manifest, key=signing_key(env))
    staged = root.parent / f".{root.name}.{MANIFEST}.{secrets.token_hex(4)}"
    try:
        _write_manifest(staged, sealed)
        staged.replace(root / MANIFEST)  # atomic: a reader sees the old manifest or the new one
    finally:
        staged.unlink(missing_ok=True)
    return check_bundle(root, environ=env)


def export_onnx(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Path:
    """`ae-monitor export --onnx`: add the scoring graph of the bundle at `path` as `model.onnx` (replacing an
    earlier one), in place and atomically, sealed (and signed, when a key is set) like the rest of the bundle.

    The graph is checked against torch's scores before it is written. Saving the bundle again (`calibrate`)
    writes it without the graph: export after the last change."""
    import torch

    root = Path(path)
    env = os.environ if environ is None else environ
    bundle = load_bundle(root, environ=env)
    key = signing_key(env)
    # reseal refuses a signed bundle without the key (it would drop the signature) before anything is written.
    manifest = {k: v for k, v in reseal(_read_manifest(root), key=key).items() if k != INTEGRITY}
    graph = scoring_graph(bundle.network, bundle.model_config, vector_shape=bundle.extractor.vector_shape,
                          loss=bundle.training.loss)  # fmt: skip
    data = export_graph(graph, input_dim=bundle.network.input_dim)
    staging = _staging_dir(root)
    try:
        for item in root.iterdir():
            if item.name not in (MANIFEST, ONNX_FILE):
                shutil.copy2(item, staging / item.name)
        (staging / ONNX_FILE).write_bytes(data)
        files = {**manifest["files"], ONNX_FILE: _sha256(staging / ONNX_FILE)}
        record = {"file": ONNX_FILE, "opset": OPSET, "inputs": [INPUT], "outputs": list(OUTPUTS),
                  "weights_sha256": files[WEIGHTS], "torch_version": torch.__version__}  # fmt: skip
        _write_manifest(staging / MANIFEST, seal({**manifest, "files": files, "onnx": record}, key=key))
        _match_umask(staging)
        _replace_dir(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / ONNX_FILE


def _load_onnx(root: Path, manifest: Mapping[str, Any], threads: int) -> OnnxNetwork:
    record = manifest.get("onnx")
    if ONNX_FILE not in manifest["files"] or not isinstance(record, dict):
        raise BundleError(f"{root} has no {ONNX_FILE}, which scoring.backend 'onnx' needs; write it with "
                          f"`ae-monitor export --onnx {root}`", field=ONNX_FILE)  # fmt: skip
    if record.get("weights_sha256") != manifest["files"][WEIGHTS]:
        raise BundleError(f"{root / ONNX_FILE} was exported from other weights than the bundle's {WEIGHTS}; "
                          f"export it again (`ae-monitor export --onnx {root}`)", field=ONNX_FILE)  # fmt: skip
    return OnnxNetwork.load(root / ONNX_FILE, threads=threads)


def _verified_manifest(root: Path, environ: Mapping[str, str] | None) -> tuple[dict[str, Any], Seal]:
    manifest = _read_manifest(root)
    found = verify(manifest, key=signing_key(os.environ if environ is None else environ))
    _verify_files(root, manifest)
    return manifest, found


def _manifest(bundle: Bundle, files: dict[str, str]) -> dict[str, Any]:
    import torch

    return {
        "schema_version": SCHEMA_VERSION,
        "name": bundle.name,
        "version": bundle.version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "package_version": ae_monitor.__version__,
        "torch_version": torch.__version__,
        "features_config": bundle.features.model_dump(mode="json"),
        "feature_state": bundle.extractor.to_manifest(),
        "vector_shape": list(bundle.extractor.vector_shape),
        "group_names": list(bundle.extractor.group_names),
        "model": bundle.model_config.model_dump(mode="json"),
        "training": bundle.training.model_dump(mode="json"),
        "calibration": None if bundle.calibration is None else bundle.calibration.to_dict(),
        "extra": dict(bundle.extra),
        "files": files,
    }


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{root} has no {MANIFEST}", field=MANIFEST) from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON: {exc}", field=MANIFEST) from exc
    if not isinstance(manifest, dict):
        raise BundleError("the manifest must be a JSON object", field=MANIFEST)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"unsupported schema version {version!r}; this ae_monitor reads version {SCHEMA_VERSION}",
            field="schema_version",
        )
    for key in ("version", "files", "features_config", "model", "vector_shape"):
        if key not in manifest:
            raise BundleError("missing from the manifest", field=key)
    return manifest


def _verify_files(root: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or WEIGHTS not in files or not set(files) <= ALLOWED_FILES:
        raise BundleError(
            f"the manifest lists {sorted(files)}; only {sorted(ALLOWED_FILES)} are accepted (no pickled weights)",
            field="files",
        )
    present = {p.name for p in root.iterdir()} - {MANIFEST}
    if present != set(files):
        raise BundleError(f"unexpected or missing files in the bundle: {sorted(present ^ set(files))}", field="files")
    for name, expected in files.items():
        actual = _sha256(root / name)
        if actual != expected:
            raise BundleError(
                f"sha256 mismatch: manifest says {expected}, file has {actual}; the bundle was modified",
                field=f"files.{name}",
            )


def _calibration_scores(root: Path, manifest: Mapping[str, Any]) -> npt.NDArray[np.float64] | None:
    if CALIBRATION_SCORES not in manifest["files"]:
        return None
    try:
        return load_arrays(str(root / CALIBRATION_SCORES))["scores"].astype(np.float64)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise BundleError(f"cannot read calibration scores: {exc}", field=CALIBRATION_SCORES) from exc


def _section(manifest: Mapping[str, Any], key: str, cls: type[_S]) -> _S:
    try:
        return cls.model_validate(manifest.get(key, {}))
    except ValidationError as exc:
        raise _bundle_error(exc, key) from exc


def _bundle_error(exc: ValidationError, key: str) -> BundleError:
    details = exc.errors()[0]
    return BundleError(str(details["msg"]), field=".".join([key, *(str(part) for part in details["loc"])]))


def _check_features_match(actual: FeaturesConfig, expected: FeaturesConfig) -> None:
    mismatch = _first_difference(actual.model_dump(mode="json"), expected.model_dump(mode="json"), "features")
    if mismatch is not None:
        field, have, want = mismatch
        raise BundleError(f"the bundle was built with {have!r} but the config asks for {want!r}", field=field)


def _first_difference(have: Any, want: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want)):
            found = _first_difference(have.get(key), want.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if have == want else (path, have, want)


def _vector_shape(manifest: Mapping[str, Any]) -> tuple[int, int]:
    shape = manifest["vector_shape"]
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise BundleError(f"expected two positive integers, got {shape!r}", field="vector_shape")
    return shape[0], shape[1]


def _torch_model(root: Path, model_config: ModelConfig, vector_shape: tuple[int, int]) -> Autoencoder:
    from ae_monitor.model.networks import build_model

    model = build_model(model_config, vector_shape)
    _load_weights(model, root / WEIGHTS)
    return model


def _load_weights(model: Autoencoder, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise BundleError(f"cannot read weights: {exc}", field=WEIGHTS) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"weights do not fit the model config: {exc}", field=WEIGHTS) from exc
    model.eval()


def _extractor(features: FeaturesConfig, manifest: Mapping[str, Any]) -> FeatureExtractor:
    try:
        return build_extractor(features, manifest.get("feature_state"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"fitted feature statistics are unusable: {exc}", field="feature_state") from exc


def _calibration(manifest: Mapping[str, Any], *, groups: int) -> Calibration | None:
    data = manifest.get("calibration")
    if data is None:
        return None
    try:
        calibration = Calibration.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"calibration record is unusable: {exc}", field="calibration") from exc
    if calibration.linear is not None:
        linear_monitor(calibration, groups=groups)  # refuse a bad monitor at load, not at the first scored window
    return calibration


def linear_monitor(calibration: Calibration | None, *, groups: int) -> LinearMonitor | None:
    """The calibrated linear monitor a calibration record holds (None when it holds none); BundleError if unusable."""
    if calibration is None or calibration.linear is None:
        return None
    try:
        monitor = LinearMonitor.from_dict(calibration.linear)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"unusable: {exc}", field="calibration.linear") from exc
    if len(monitor.mean) != groups or not monitor.scales:
        raise BundleError(
            f"holds {len(monitor.mean)} channels and {len(monitor.scales)} scales; the model's vectors have "
            f"{groups} channels and a calibrated monitor has one scale per term",
            field="calibration.linear",
        )
    return monitor


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _staging_dir(target: Path) -> Path:
    # Not tempfile.mkdtemp: it creates 0700 whatever the umask, and the daemon's user could not read the bundle.
    # mkdir(0o777) gives what the umask allows (0755 under 022); _match_umask gives the files the same.
    while True:
        staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        try:
            staging.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return staging


def _match_umask(staging: Path) -> None:
    # safetensors writes 0600 whatever the umask: give every file what the umask gave the directory, less execute.
    mode = stat.S_IMODE(staging.stat().st_mode) & 0o666
    for path in staging.iterdir():
        path.chmod(mode)


def _replace_dir(staging: Path, target: Path) -> None:
    # rename() is atomic on one filesystem; an old bundle is moved aside first, then removed.
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
