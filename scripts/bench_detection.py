"""The detection benchmark in one go: ae_monitor against a rolling z-score and PCA T²+Q, each at its own threshold.

Suites: the GutenTAG series of benchmarks/gutentag.yaml (generated now, fixed seed), SKAB's outlier protocol
(skipped, with a note, when the data folder is absent) and the demo pumps. ae_monitor runs with ONE configuration
(configs/sensor-skab.toml, the shipped one, by default); only the channel names change per data set. Writes
results.json, results.md and summary.png under --out. See ae_monitor/jobs/suite.py for the protocol and the metrics.

    .venv/bin/python scripts/bench_detection.py --out bench-out [--config FILE] [--skab PATH] [--only SUITE ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SKAB = ROOT.parent / "shared" / "data" / "skab"
SUITES = ("gutentag", "skab", "demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md, summary.png")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "sensor-skab.toml",
                        help="ae_monitor's configuration (default: the shipped one; benchmarks/calibrated.toml: the "
                        "cross-fitted, target-rate, max-aggregation variant)")  # fmt: skip
    parser.add_argument("--gutentag", type=Path, default=ROOT / "benchmarks" / "gutentag.yaml")
    parser.add_argument("--skab", type=Path, default=DEFAULT_SKAB, help="SKAB data folder (valve1/, valve2/, other/)")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES), help="run only these suites")
    parser.add_argument("--detectors", nargs="+", default=["ae_monitor", "zscore", "pca"],
                        help="also: ae_monitor_learned (no offline training: each stream learns from its first "
                             "rows), ae_monitor_tracked (inputs minus a tracking level; an experiment)")  # fmt: skip
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--dump-scores", action="store_true", help="also keep per-case errors (npz) in OUT/scores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ae_monitor.model.training").setLevel(logging.WARNING)

    from ae_monitor.config import load_config
    from ae_monitor.jobs import suite

    config = load_config(args.config)
    cases = []
    if "gutentag" in args.only:
        cases += suite.gutentag_cases(args.gutentag)
    if "skab" in args.only:
        if (args.skab / "valve1").is_dir():
            cases += suite.skab_cases(config, args.skab)
        else:
            logging.warning("SKAB skipped: no data under %s (pass --skab PATH)", args.skab)
    if "demo" in args.only:
        cases += suite.demo_cases()
    res = suite.run_suite(
        config, cases, args.out, detectors=args.detectors, plots=not args.no_plots, dump=args.dump_scores
    )
    sys.stdout.write((args.out / "results.md").read_text(encoding="utf-8"))
    return 0 if res["suites"] else 1


if __name__ == "__main__":
    sys.exit(main())
