"""scripts/footprint.py: serve's resident memory broken down by mapped file, per phase, per scoring backend."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from script_loader import load_script

from ae_monitor.model.bundle import export_onnx

footprint = load_script("footprint.py", name="footprint")


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("/venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcublasLt.so.13", "CUDA libraries (PyPI torch build)"),
        ("/venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so", "CUDA libraries (PyPI torch build)"),
        ("/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so", "libtorch_cpu.so"),
        ("/venv/lib/python3.11/site-packages/torch/lib/libtorch_python.so", footprint.CATEGORIES[2]),
        ("/venv/lib/python3.11/site-packages/onnxruntime/capi/onnxruntime_pybind11_state.so", "onnxruntime"),
        ("/venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_.so", footprint.CATEGORIES[4]),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", footprint.CATEGORIES[5]),
        ("[heap]", footprint.CATEGORIES[6]),
        ("", footprint.CATEGORIES[6]),
        ("/usr/lib/locale/C.utf8/LC_CTYPE", footprint.CATEGORIES[7]),
    ],
)
def test_each_mapping_is_grouped_by_what_loaded_it(path: str, group: str) -> None:
    assert footprint.category(path) == group


def test_the_breakdown_accounts_for_the_whole_rss() -> None:
    found = footprint.breakdown(os.getpid())
    status = Path("/proc/self/status").read_text()
    rss_mb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    assert found["rss_mb"] == pytest.approx(rss_mb, rel=0.05)
    assert found["groups"]["anonymous (Python heap, malloc arenas, tensors, stacks)"]["rss"] > 0


def test_serve_phases_with_the_onnx_backend_never_import_torch(sensor_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed")
    bundle = shutil.copytree(sensor_bundle, tmp_path / "b")
    export_onnx(bundle)
    phases = footprint.measure_child("onnx", bundle, 50, None)
    names = [name for name, _ in phases]
    assert names[0] == "interpreter"
    assert "+ onnxruntime" in names
    assert any(name.startswith("50 active streams") for name in names)
    assert names[-1] == "done torch_imported=False"
    rss = {name: found["rss_mb"] for name, found in phases if found}
    assert rss["bundle loaded, engine built, one stream scored"] > rss["interpreter"]
