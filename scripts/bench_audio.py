"""The audio benchmark in one run: real MIMII/DCASE clips and the synthetic fault suite, recipe vs two baselines.

Writes results.json, results.md, window_auc.png and clip_auc.png to --out (see ae_monitor/jobs/audio_benchmark.py for
the protocol). Real clips are read from --data (default ../shared/data/audio) and skipped with a note when absent.

    .venv/bin/python scripts/bench_audio.py --out bench-audio [--config configs/audio-dcase.toml] [--data PATH]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ae_monitor.config import load_config
from ae_monitor.jobs.audio_benchmark import MachineResult, run_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "audio"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "audio-dcase.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and plots")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the recipe under test")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the real clips (skipped when absent)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def progress(result: MachineResult) -> None:
        cells = "  ".join(f"{m} {f['window_auc']:.3f}/{f['clip_auc']:.3f}" for m, f in result.figures.items())
        print(f"{result.name:<26} window/clip AUC  {cells}", flush=True)

    report = run_benchmark(
        load_config(args.config), args.out, data=args.data, plots=not args.no_plots, on_machine=progress
    )
    for note in report["notes"]:
        print(note)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
