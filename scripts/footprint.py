#!/usr/bin/env python3
"""What serve's resident memory is: RSS broken down by mapped file and by import, per scoring backend.

Starts a fresh interpreter per backend (torch, onnx) that goes through the phases of `ae-monitor serve` without a
broker, and after each phase reads that process's /proc/<pid>/smaps (this process never imports what it measures):

    1. interpreter          python and the standard library only
    2. + numpy ... + ae_monitor serve modules   each import serve makes at start, in turn (RSS added by each)
    3. bundle + engine      the bundle loaded for the backend, the engine built as serve builds it, one batch scored
    4. N active streams     N sensor streams with windows scored and per-stream state held
    5. after eviction       every stream evicted as idle, then gc + malloc_trim as serve's housekeeping does

Mappings are grouped: CUDA libraries of the PyPI torch build, libtorch_cpu, the rest of torch, onnxruntime,
numpy/scipy (with OpenBLAS), other shared libraries, and anonymous memory (the Python heap, malloc arenas, tensors).
RSS counts file pages shared with other processes in full; "private" is what this process alone holds.

    .venv/bin/python scripts/footprint.py                       # both backends, 10,000 streams; ~1 min
    .venv/bin/python scripts/footprint.py --bundle DIR --backends onnx --streams 1000
    .venv/bin/python scripts/footprint.py --serve               # also a real `ae-monitor serve` at rest (local broker)
    .venv/bin/python scripts/footprint.py --pid 12345           # break down any running process

Without --bundle it trains the demo's small sensor bundle (the one scripts/bench_serve.py serves) and exports its
model.onnx. docs/footprint.md has its output and what was decided from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CATEGORIES = (
    "CUDA libraries (PyPI torch build)",
    "libtorch_cpu.so",
    "rest of torch (libtorch_python, libc10, libgomp, ...)",
    "onnxruntime",
    "numpy + scipy (incl. OpenBLAS)",
    "other shared libraries (extensions, libpython, libc, ssl)",
    "anonymous (Python heap, malloc arenas, tensors, stacks)",
    "other mapped files",
)
_CUDA_MARKERS = ("/nvidia/", "libtorch_cuda", "libc10_cuda", "libcudnn", "libnccl", "libcublas", "libcusparse",
                 "libcufft", "libcurand", "libnvrtc", "libcupti", "libnvjitlink", "libcusolver", "libcudart",
                 "libnvshmem", "libcufile", "/triton/")  # fmt: skip


_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def category(path: str) -> str:
    """The group a mapping belongs to, from its path ('' or '[heap]' for anonymous memory)."""
    lower = path.lower()
    if not path or path.startswith("[") or path.startswith("/memfd:") or "(deleted)" in path:
        return CATEGORIES[6]
    if any(marker in lower for marker in _CUDA_MARKERS):
        return CATEGORIES[0]
    if "libtorch_cpu" in lower:
        return CATEGORIES[1]
    if "/torch/" in lower or "/torch.libs/" in lower:
        return CATEGORIES[2]
    if "onnxruntime" in lower:
        return CATEGORIES[3]
    if any(m in lower for m in ("/numpy/", "/numpy.libs/", "/scipy/", "/scipy.libs/", "openblas")):
        return CATEGORIES[4]
    if ".so" in lower or "/bin/python" in lower:
        return CATEGORIES[5]
    return CATEGORIES[7]


def smaps(pid: int) -> dict[str, dict[str, int]]:
    """kB per mapped path: rss, private (clean + dirty) and anonymous, summed over the path's mappings."""
    found: dict[str, dict[str, int]] = defaultdict(lambda: {"rss": 0, "private": 0, "anonymous": 0})
    path = ""
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            head, _, rest = line.partition(":")
            if _HEADER.match(line):  # a mapping's header: address range, perms, offset, dev, inode, path
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) > 5 else ""
                continue
            key = {"Rss": "rss", "Private_Clean": "private", "Private_Dirty": "private", "Anonymous": "anonymous"}
            if head in key:
                found[path][key[head]] += int(rest.split()[0])
    return found


def breakdown(pid: int) -> dict[str, object]:
    """RSS of `pid` by category, and its largest mapped files (MB)."""
    per_path = smaps(pid)
    groups: dict[str, dict[str, float]] = {c: {"rss": 0.0, "private": 0.0, "anonymous": 0.0} for c in CATEGORIES}
    for path, kb in per_path.items():
        for key, value in kb.items():
            groups[category(path)][key] += value / 1024
    files = sorted(((kb["rss"] / 1024, path) for path, kb in per_path.items() if path), reverse=True)[:12]
    total = sum(g["rss"] for g in groups.values())
    return {"rss_mb": total, "groups": groups, "top_files": files}


# ------------------------------------------------------------------------------------------------ the measured child

IMPORT_STEPS = {
    "torch": [("numpy", "numpy"), ("pydantic, msgspec, config", "ae_monitor.config"),
              ("scipy.stats (threshold.py)", "ae_monitor.threshold"), ("torch", "torch"),
              ("kafka-python, prometheus-client, httpx", "kafka,prometheus_client,httpx"),
              ("ae_monitor serve modules", "ae_monitor.cli,ae_monitor.serve.app,ae_monitor.sources.kafka,"
                                           "ae_monitor.sinks.kafka,ae_monitor.scoring")],
    "onnx": [("numpy", "numpy"), ("pydantic, msgspec, config", "ae_monitor.config"),
             ("scipy.stats (threshold.py)", "ae_monitor.threshold"), ("onnxruntime", "onnxruntime"),
             ("kafka-python, prometheus-client, httpx", "kafka,prometheus_client,httpx"),
             ("ae_monitor serve modules", "ae_monitor.cli,ae_monitor.serve.app,ae_monitor.sources.kafka,"
                                          "ae_monitor.sinks.kafka,ae_monitor.scoring")],
}  # fmt: skip


def child(backend: str, bundle_path: str, streams: int, signal_path: str | None) -> None:
    """Go through serve's phases, announcing each on stdout and waiting for a line on stdin before the next."""
    import importlib

    def phase(name: str) -> None:
        print(name, flush=True)
        sys.stdin.readline()

    phase("interpreter")
    for label, modules in IMPORT_STEPS[backend]:
        for module in modules.split(","):
            importlib.import_module(module)
        phase(f"+ {label}")

    import ctypes
    import gc

    import numpy as np
    from prometheus_client import CollectorRegistry

    from ae_monitor.config import AlertingConfig, StreamsConfig
    from ae_monitor.engine import Engine
    from ae_monitor.metrics import Metrics
    from ae_monitor.model.bundle import load_bundle
    from ae_monitor.records import SensorRecord

    if backend == "torch":
        import torch

        torch.set_num_threads(1)  # serve's default scoring.torch_threads
    bundle = load_bundle(bundle_path, backend=backend)  # type: ignore[arg-type]
    engine = Engine(bundle, alerting=AlertingConfig(), metrics=Metrics(CollectorRegistry()),
                    streams=StreamsConfig(max_streams=max(streams, 1)))  # fmt: skip
    channels = bundle.extractor.group_names
    rows = bundle.features.sensor.window_samples + 10
    # Healthy signal (no alerts, so no open episodes are kept after eviction), each stream from its own offset.
    rng = np.random.default_rng(0)
    signal = np.load(signal_path) if signal_path else rng.normal(0.0, 1.0, size=(2000, len(channels)))

    def feed(names: Sequence[str], first_row: int, n: int) -> int:
        def values(i: int) -> np.ndarray:
            start = (7 * i) % (len(signal) - 2 * rows) + first_row  # contiguous across feeds
            return np.ascontiguousarray(signal[start : start + n])

        records = [SensorRecord(name, 1.7e9 + first_row + np.arange(n, dtype=np.float64), values(i), channels)
                   for i, name in enumerate(names)]  # fmt: skip
        return sum(engine.process(records[i : i + 1000]).window_count for i in range(0, len(records), 1000))

    feed(["warm-up"], 0, rows)
    engine.drop_streams(["warm-up"])
    gc.collect()
    phase("bundle loaded, engine built, one stream scored")
    names = [f"pump-{i:05d}" for i in range(streams)]
    scored = feed(names, 0, rows)
    scored += feed(names, rows, 5)
    gc.collect()
    firing = sum(1 for state in engine.streams.values() if state.alert.episode is not None)
    phase(f"{streams:,} active streams ({scored:,} windows scored, {firing:,} firing)")
    evicted = engine.evict_idle(time.time() + 10 * StreamsConfig().idle_eviction_s)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    phase(f"after evicting {len(evicted):,} streams (gc + malloc_trim, as serve does)")
    # A second generation of as many new streams: what eviction kept is reused, not added to.
    names = [f"valve-{i:05d}" for i in range(streams)]
    feed(names, 0, rows)
    gc.collect()
    phase(f"{streams:,} other streams")
    evicted = engine.evict_idle(time.time() + 10 * StreamsConfig().idle_eviction_s)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    phase(f"after evicting those {len(evicted):,}")
    torch_loaded = "torch" in sys.modules
    print(f"done torch_imported={torch_loaded}", flush=True)


def measure_child(backend: str, bundle: Path, streams: int, signal: Path | None) -> list[tuple[str, dict[str, object]]]:
    """Run the child for `backend`; the breakdown after each of its phases."""
    command = [sys.executable, __file__, "--child", backend, "--bundle", str(bundle), "--streams", str(streams)]
    command += ["--signal", str(signal)] if signal else []
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdin is not None
    assert proc.stdout is not None
    phases = []
    try:
        for line in proc.stdout:
            name = line.strip()
            if name.startswith("done"):
                phases.append((name, {}))
                break
            phases.append((name, breakdown(proc.pid)))
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        proc.stdout.close()
        if proc.wait(timeout=120) != 0:
            raise SystemExit(f"the {backend} child failed with exit status {proc.returncode}")
    return phases


# -------------------------------------------------------------------------------------------- a real serve at rest


@contextlib.contextmanager
def local_broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    sys.path.insert(0, str(REPO / "scripts"))
    import kafka_broker

    broker = kafka_broker.start_broker()
    try:
        yield broker.bootstrap
    finally:
        kafka_broker.stop_broker(broker)


def serve_at_rest(backend: str, bundle: Path, bootstrap: str, workdir: Path, settle_s: float) -> dict[str, object]:
    """`ae-monitor serve` with the backend and production outputs, subscribed to an empty topic; its breakdown once
    ready and settled."""
    import urllib.request

    topic = f"footprint-{backend}-{os.getpid()}"
    config = workdir / f"serve-{backend}.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = ["{bootstrap}"]\n\n[source]\ntopics = ["{topic}"]\ngroup_id = "{topic}"\n\n'
        f'[scoring]\nbackend = "{backend}"\n\n[service]\nhttp_port = 0\n\n[[routes]]\nbundle_path = "{bundle}"\n\n'
        # The outputs of scripts/chaos.py's production setting: alerts, dead letters, alert states, a webhook.
        f'[sinks.kafka]\nalerts_topic = "{topic}-alerts"\ndead_letter_topic = "{topic}-dead"\n'
        f'state_topic = "{topic}-state"\n\n[sinks.webhook]\nurl = "http://127.0.0.1:9/alerts"\n',
        encoding="utf-8",
    )
    log = workdir / f"serve-{backend}.log"
    env = {**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, "PYTHONPATH": str(REPO)}
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ae_monitor.cli", "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=REPO)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
                ports = re.findall(r"serving /metrics.*? on http://[^\s\"]+:(\d+)", log.read_text())
                if ports:
                    with contextlib.suppress(OSError):
                        url = f"http://127.0.0.1:{ports[0]}/readyz"
                        with urllib.request.urlopen(url, timeout=5) as response:
                            if response.status == 200:
                                break
                time.sleep(0.2)
            else:
                raise SystemExit(f"serve not ready in 120 s:\n{log.read_text()[-2000:]}")
            time.sleep(settle_s)
            return breakdown(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------------------- reporting


def _table(phases: Sequence[tuple[str, dict[str, object]]]) -> list[str]:
    lines = ["| phase | RSS MB | added | private MB | anonymous MB |", "|---|---:|---:|---:|---:|"]
    last = 0.0
    for name, found in phases:
        if not found:
            continue
        groups: dict[str, dict[str, float]] = found["groups"]  # type: ignore[assignment]
        rss = float(found["rss_mb"])  # type: ignore[arg-type]
        private = sum(g["private"] for g in groups.values())
        anonymous = sum(g["anonymous"] for g in groups.values())
        lines.append(f"| {name} | {rss:.0f} | {rss - last:+.0f} | {private:.0f} | {anonymous:.0f} |")
        last = rss
    return lines


def _groups(found: dict[str, object]) -> list[str]:
    groups: dict[str, dict[str, float]] = found["groups"]  # type: ignore[assignment]
    lines = ["| mapped | RSS MB | private MB | anonymous MB |", "|---|---:|---:|---:|"]
    for name in CATEGORIES:
        g = groups[name]
        if g["rss"] >= 0.5:
            lines.append(f"| {name} | {g['rss']:.0f} | {g['private']:.0f} | {g['anonymous']:.0f} |")
    lines.append(f"| **total** | **{float(found['rss_mb']):.0f}** | | |")  # type: ignore[arg-type]
    return lines


def _files(found: dict[str, object]) -> list[str]:
    top: list[tuple[float, str]] = found["top_files"]  # type: ignore[assignment]
    home = str(Path(sys.prefix))
    return [f"    {mb:7.1f} MB  {path.replace(home, '<venv>')}" for mb, path in top]


def report(results: dict[str, list[tuple[str, dict[str, object]]]], served: dict[str, dict[str, object]]) -> str:
    out = [f"python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().machine}", ""]
    for backend, phases in results.items():
        out += [f"## backend {backend}", "", *_table(phases), ""]
        engine = next(found for name, found in phases if name.startswith("bundle loaded"))
        out += [f"By mapping, bundle loaded and engine built ({backend}):", "", *_groups(engine), ""]
        out += ["Largest mapped files:", "", *_files(engine), ""]
        out += [f"({phases[-1][0]})", ""]
    for backend, found in served.items():
        out += [f"## `ae-monitor serve` at rest, backend {backend} (local broker, empty topic)", "", *_groups(found),
                "", "Largest mapped files:", "", *_files(found), ""]  # fmt: skip
    return "\n".join(out)


def prepare_bundle(workdir: Path) -> Path:
    """The demo's sensor bundle (as scripts/bench_serve.py trains it), with its model.onnx exported."""
    from ae_monitor.jobs.demo import demo_config, make_data
    from ae_monitor.jobs.train import train_bundle

    train, _ = make_data(workdir / "pumps", train_s=3000, replay_s=1000)
    path = train_bundle(demo_config(), [train], workdir / "pump", name="pump", progress=False).path
    return path


def healthy_signal(bundle: Path, workdir: Path) -> Path | None:
    """The demo pump's healthy signal as .npy when the bundle has its channels (and torch is here to train the
    demo's module chain); None gives the child noise."""
    import numpy as np

    try:
        from ae_monitor.jobs.demo import CHANNELS, machine
    except ImportError:  # a serve-only install: no training modules
        return None
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if tuple(manifest["group_names"]) != CHANNELS:
        return None
    path = workdir / "healthy.npy"
    np.save(path, machine(2000, np.random.default_rng(3))[0])
    return path


def with_onnx(bundle: Path, workdir: Path) -> Path:
    """`bundle` if it has a model.onnx, else a copy with one exported."""
    if (bundle / "model.onnx").exists():
        return bundle
    from ae_monitor.model.bundle import export_onnx

    copy = shutil.copytree(bundle, workdir / "exported")
    export_onnx(copy)
    return copy


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="sensor bundle (default: train the demo's)")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--streams", type=int, default=10_000, help="active streams to hold")
    parser.add_argument("--serve", action="store_true", help="also measure `ae-monitor serve` at rest per backend")
    parser.add_argument("--bootstrap", help="Kafka for --serve (default: a throwaway local broker)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="--serve: seconds after ready before measuring")
    parser.add_argument("--pid", type=int, help="only break down this running process")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--signal", help="healthy rows (n, channels) as .npy to feed (default: the demo pump's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, str(args.bundle), args.streams, args.signal)
        return 0
    if args.pid:
        found = breakdown(args.pid)
        print("\n".join([*_groups(found), "", *_files(found)]))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or prepare_bundle(work)
        if "onnx" in backends:
            bundle = with_onnx(bundle, work)
        signal = Path(args.signal) if args.signal else healthy_signal(bundle, work)
        results = {backend: measure_child(backend, bundle, args.streams, signal) for backend in backends}
        served: dict[str, dict[str, object]] = {}
        if args.serve:
            with local_broker(args.bootstrap) as bootstrap:
                served = {b: serve_at_rest(b, bundle, bootstrap, work, args.settle_s) for b in backends}
    print(report(results, served))
    if args.json:
        args.json.write_text(json.dumps({"phases": results, "serve": served}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
