"""The `ae-monitor` command. Each subcommand loads its inputs and calls one job; errors become one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ae_monitor.config import CalibrationConfig, dump_config, load_config
from ae_monitor.errors import AeMonitorError, ConfigError

log = logging.getLogger("ae_monitor")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except AeMonitorError as exc:
        print(f"ae-monitor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ae-monitor", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_config(sub)
    _add_train(sub)
    _add_calibrate(sub)
    _add_score(sub)
    _add_evaluate(sub)
    _add_replay(sub)
    _add_demo(sub)
    return parser


def _add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="inspect configuration files")
    check = config.add_subparsers(required=True, metavar="ACTION").add_parser(
        "check", help="print the resolved config (file + AE_MONITOR_* environment), or every error"
    )
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.file)), end="")
    return 0


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train and calibrate a model bundle on normal data")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True, help="audio files/folders or sensor CSV files/folders")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--rows", help="START:END rows (sensor) or samples (audio) of each file to use")
    p.add_argument("--name", help="bundle name (default: the --out folder name)")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.train import train_bundle

    report = train_bundle(load_config(args.config), args.data, args.out, rows=parse_rows(args.rows), name=args.name)
    cal = report.bundle.calibration
    log.info("wrote %s (version %s); threshold %.6g by %s", report.path, report.bundle.version,
             report.bundle.threshold, cal.method if cal else "?")  # fmt: skip
    return 0


def _add_calibrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("calibrate", help="recalibrate a bundle's threshold on normal data")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--method", choices=["quantile", "gamma", "pot", "false_alarm_rate"])
    p.add_argument("--config", type=Path, help="take the [calibration] settings from this config")
    p.add_argument("--rows", help="START:END rows of each file to use")
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.train import calibrate_bundle

    cfg = load_config(args.config).calibration if args.config else CalibrationConfig()
    if args.method:
        cfg = cfg.model_copy(update={"method": args.method})
    calibration = calibrate_bundle(args.bundle, args.data, cfg, rows=parse_rows(args.rows))
    log.info("threshold %.6g by %s on %d windows", calibration.threshold, calibration.method, calibration.n_samples)
    return 0


def _add_score(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("score", help="score files: one line per window")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("paths", nargs="+")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--out", default="-", help="output file ('-' = stdout)")
    p.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.evaluate import score_files
    from ae_monitor.model.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if args.out == "-":
        score_files(bundle, args.paths, sys.stdout, fmt=args.format)
        return 0
    with open(args.out, "w", encoding="utf-8", newline="") as handle:
        score_files(bundle, args.paths, handle, fmt=args.format)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="AUC, pAUC, F1, FAR, MAR on labelled data, with plots")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--report", type=Path, required=True, help="folder for report.json, predictions.csv, plots")
    p.add_argument("--rows", help="START:END rows of each file to evaluate")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.evaluate import evaluate
    from ae_monitor.model.bundle import load_bundle

    report = evaluate(load_bundle(args.bundle), args.data, args.report, rows=parse_rows(args.rows),
                      plots=not args.no_plots)  # fmt: skip
    overall = report["overall"]
    print(" ".join(f"{k}={_fmt(overall[k])}" for k in ("auc", "pauc", "f1", "far", "mar", "precision", "recall")))
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="stream files through the pipeline; alerts as JSON lines")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--bundle", type=Path, help="bundle directory (default: replay.bundle_path)")
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from ae_monitor.service import replay

    config = load_config(args.config)
    bundle = args.bundle or config.replay.bundle_path
    if bundle is None:
        raise ConfigError("no bundle given: pass --bundle or set it", key="replay.bundle_path")
    replay(config, Path(bundle), args.input)
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="train on a synthetic machine and replay it with injected faults")
    p.add_argument("--duration", type=float, default=60.0, help="about how long the demo runs, in seconds")
    p.add_argument("--out", type=Path, help="keep the generated data and bundle here (default: a temp folder)")
    p.add_argument("--metrics-port", type=int, default=9108, help="serve /metrics on 127.0.0.1 here (0 = any)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ae_monitor.service import demo

    if args.out is not None:
        return demo(args.out, duration_s=args.duration, metrics_port=args.metrics_port)
    with tempfile.TemporaryDirectory(prefix="ae-monitor-demo-") as tmp:
        return demo(Path(tmp), duration_s=args.duration, metrics_port=args.metrics_port)


if __name__ == "__main__":
    sys.exit(main())
