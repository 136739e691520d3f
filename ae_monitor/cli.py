"""The `ae-monitor` command. Each subcommand loads its inputs and calls one job; errors become one clear line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ae_monitor import __version__
from ae_monitor.config import dump_config, load_config
from ae_monitor.errors import AeMonitorError, ConfigError
from ae_monitor.logs import configure as configure_logging

if TYPE_CHECKING:
    from ae_monitor.model.integrity import Seal
    from ae_monitor.registry import BundleRegistry

log = logging.getLogger("ae_monitor")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(level=logging.WARNING if args.quiet else logging.INFO, json_format=args.log_json)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except AeMonitorError as exc:
        return _fail(str(exc), args.log_json, status=2)
    except OSError as exc:  # a file that cannot be read or written: the OS names it
        return _fail(str(exc), args.log_json, status=1)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, log_json: bool, *, status: int) -> int:
    """One line on stderr: a JSON log line under --log-json, else `ae-monitor: error: ...`."""
    if log_json:
        log.error("%s", message)
    else:
        print(f"ae-monitor: error: {message}", file=sys.stderr)
    return status


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ae-monitor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.add_argument("--log-json", action="store_true", help="structured JSON log lines (serve uses them always)")
    # Every subcommand's parser is a _Parser (defaults in its help); the _add_* functions need only ArgumentParser.
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
               parser.add_subparsers(required=True, metavar="COMMAND"))  # fmt: skip
    _add_config(sub)
    _add_bundle(sub)
    _add_registry(sub)
    _add_export(sub)
    _add_train(sub)
    _add_calibrate(sub)
    _add_score(sub)
    _add_evaluate(sub)
    _add_replay(sub)
    _add_demo(sub)
    _add_benchmark(sub)
    _add_encode(sub)
    _add_decode(sub)
    _add_denoise(sub)
    _add_sample(sub)
    _add_serve(sub)
    return parser


def _add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="inspect configuration files, or print a starting one")
    actions = config.add_subparsers(required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="print the resolved config (file + AE_MONITOR_* environment), or every error"
    )
    check.add_argument("file", type=Path, help="config file (TOML)")
    check.set_defaults(handler=_config_check)
    example = actions.add_parser("example", help="print a commented starting config")
    example.add_argument("kind", choices=["sensor", "audio"], help="sensor CSVs/records, or machine sound")
    example.set_defaults(handler=_config_example)


def _config_check(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.file)), end="")
    return 0


def _config_example(args: argparse.Namespace) -> int:
    from ae_monitor.starters import EXAMPLES

    print(EXAMPLES[args.kind], end="")
    return 0


def _add_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = sub.add_parser("bundle", help="verify or sign model bundles").add_subparsers(required=True,
                                                                                          metavar="ACTION")  # fmt: skip
    verify = actions.add_parser("verify", help="check digest, signature (when AE_MONITOR_BUNDLE_KEY is set), files")
    verify.add_argument("paths", nargs="+", type=Path)
    verify.set_defaults(handler=_bundle_verify)
    sign = actions.add_parser("sign", help="seal a bundle again in place: add its digest, sign it with the key if set")
    sign.add_argument("paths", nargs="+", type=Path)
    sign.set_defaults(handler=_bundle_sign)


def _bundle_verify(args: argparse.Namespace) -> int:
    from ae_monitor.model.bundle import check_bundle, load_bundle

    for path in args.paths:
        found = check_bundle(path)
        bundle = load_bundle(path)  # the weights and configs load too: what serve would accept
        print(f"{path}: ok, {bundle.name} version {bundle.version}, {_seal_text(found)}")
    return 0


def _bundle_sign(args: argparse.Namespace) -> int:
    from ae_monitor.model.bundle import sign_bundle

    for path in args.paths:
        print(f"{path}: {_seal_text(sign_bundle(path))}")
    return 0


def _seal_text(found: Seal) -> str:
    if found.state == "signed":
        return f"digest {found.digest}, signature verified (key id {found.signer})"
    if found.state == "sealed" and found.signer is not None:
        return f"digest {found.digest}, signed by key id {found.signer}: NOT CHECKED, AE_MONITOR_BUNDLE_KEY is not set"
    if found.state == "sealed":
        return f"digest {found.digest}, not signed"
    return "UNVERIFIED: no digest (written before ae_monitor sealed bundles; `ae-monitor bundle sign` adds one)"


def _add_registry(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _Parser(add_help=False)
    common.add_argument("--root", default=os.environ.get("AE_MONITOR_REGISTRY"),
                        help="a registry folder, or an MLflow server's http(s) URL "
                        "(default: $AE_MONITOR_REGISTRY)")  # fmt: skip
    actions = sub.add_parser("registry", help="versioned bundles, aliases (production, candidate) and provenance"
                             ).add_subparsers(required=True, metavar="ACTION")  # fmt: skip
    p = actions.add_parser("list", parents=[common], help="models and their aliases, or one model's versions")
    p.add_argument("model", nargs="?")
    p.set_defaults(handler=_registry_list)
    p = actions.add_parser("show", parents=[common], help="a version's provenance (JSON), by number or alias")
    p.add_argument("model")
    p.add_argument("version", help="a version number or an alias (production, candidate, ...)")
    p.set_defaults(handler=_registry_show)
    p = actions.add_parser("register", parents=[common], help="store a trained bundle folder as the next version")
    p.add_argument("model")
    p.add_argument("bundle", type=Path, help="the bundle folder (`ae-monitor train --out`)")
    p.add_argument("--parent", type=int, help="the version it was derived from (retrained or fine-tuned)")
    p.add_argument("--data-span", nargs=2, metavar=("START", "END"), help="the training data's time span")
    p.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE",
                   help="a result to keep with the version (repeatable; VALUE as JSON when it parses)")  # fmt: skip
    p.add_argument("--note", help="free text kept in the provenance")
    p.add_argument("--promote", metavar="ALIAS", help="point this alias at the new version too")
    p.set_defaults(handler=_registry_register)
    p = actions.add_parser("promote", parents=[common], help="point an alias at a version (serve reloads it)")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", help="kept in the alias's history")
    p.set_defaults(handler=_registry_promote)
    p = actions.add_parser("rollback", parents=[common], help="point an alias back at the version it named before")
    p.add_argument("model")
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", help="kept in the alias's history")
    p.set_defaults(handler=_registry_rollback)


def _registry(args: argparse.Namespace) -> BundleRegistry:
    from ae_monitor.registry import open_registry

    if not args.root:
        raise ConfigError("no registry folder: pass --root or set AE_MONITOR_REGISTRY", key="--root")
    return open_registry(args.root)


def _registry_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.model is None:
        for model in registry.models():
            aliases = " ".join(f"{a.name}={a.version}" for a in registry.aliases(model).values())
            print(f"{model}: {len(registry.versions(model))} versions  {aliases}".rstrip())
        return 0
    named: dict[int, list[str]] = {}
    for alias in registry.aliases(args.model).values():
        named.setdefault(alias.version, []).append(alias.name)
    for v in registry.versions(args.model):
        calibration = v.provenance.get("calibration") or {}
        threshold = calibration.get("threshold")
        print(f"{v.number}  {v.provenance.get('registered_at')}  weights {v.provenance['bundle']['weights_version']}"
              f"  threshold {'n/a' if threshold is None else f'{threshold:.4g}'}  parent {v.provenance.get('parent')}"
              f"  {' '.join(named.get(v.number, []))}".rstrip())  # fmt: skip
    return 0


def _registry_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    version = (registry.version(args.model, int(args.version)) if args.version.isdigit()
               else registry.resolve(args.model, args.version))  # fmt: skip
    aliases = {a.name: a.version for a in registry.aliases(args.model).values()}
    shown = {**version.provenance, "path": str(version.bundle_path),
             "aliases": sorted(n for n, v in aliases.items() if v == version.number)}  # fmt: skip
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def _registry_register(args: argparse.Namespace) -> int:
    registry = _registry(args)
    version = registry.register(args.model, args.bundle, parent=args.parent, metrics=_metrics(args.metric),
                                data_span=None if args.data_span is None else tuple(args.data_span),
                                note=args.note)  # fmt: skip
    print(f"{args.model} version {version.number}: {version.bundle_path}")
    if args.promote:
        registry.promote(args.model, version.number, args.promote)
        print(f"{args.model} {args.promote} -> version {version.number}")
    return 0


def _metrics(pairs: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not (key and equals):
            raise ConfigError(f"{pair!r} is not KEY=VALUE", key="--metric")
        try:
            found[key] = json.loads(value)
        except json.JSONDecodeError:
            found[key] = value
    return found


def _registry_promote(args: argparse.Namespace) -> int:
    alias = _registry(args).promote(args.model, args.version, args.alias, reason=args.reason)
    print(f"{args.model} {alias.name} -> version {alias.version}" + (
        f" (was {alias.previous[-1]})" if alias.previous else ""))  # fmt: skip
    return 0


def _registry_rollback(args: argparse.Namespace) -> int:
    alias = _registry(args).rollback(args.model, args.alias, reason=args.reason)
    print(f"{args.model} {alias.name} -> version {alias.version} (rolled back from {alias.moves[-1]['from']})")
    return 0


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write a bundle's scoring graph for another runtime (scoring.backend)")
    p.add_argument("--onnx", action="store_true", required=True,
                   help="model.onnx in the bundle, for scoring.backend = 'onnx' (needs the `onnx` extra)")  # fmt: skip
    p.add_argument("paths", nargs="+", type=Path, metavar="BUNDLE")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from ae_monitor.model.bundle import export_onnx

    for path in args.paths:
        print(f"{path}: wrote {export_onnx(path)} (checked against torch's scores)")
    return 0


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train and calibrate a model bundle on normal data")
    p.add_argument("--config", type=Path, required=True, help="config file (TOML; `ae-monitor config check` shows it)")
    p.add_argument("--data", nargs="+", required=True, help="audio files/folders or sensor CSV files/folders")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--rows", help="START:END rows (sensor) or samples (audio) of each file to use")
    p.add_argument("--name", help="bundle name (default: the --out folder name)")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.train import train_bundle

    config = load_config(args.config)
    report = train_bundle(config, args.data, args.out, rows=parse_rows(args.rows), name=args.name)
    result = report.result
    stop = (f"stopped early after {result.epochs_run} of {config.training.epochs} epochs (no better validation loss "
            f"for {config.training.early_stopping_patience} epochs)" if result.stopped_early
            else f"ran all {result.epochs_run} epochs")  # fmt: skip
    log.info("trained in %.1f s: %s; best epoch %d", result.seconds, stop, result.best_epoch)
    cal = report.bundle.calibration
    log.info("wrote %s (version %s); threshold %.6g by %s", report.path, report.bundle.version,
             report.bundle.threshold, cal.method if cal else "?")  # fmt: skip
    return 0


def _add_calibrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("calibrate", help="recalibrate a bundle's threshold on normal data")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory to recalibrate in place")
    p.add_argument("--data", nargs="+", required=True, help="normal data: audio or sensor CSV files/folders")
    p.add_argument("--method", choices=["quantile", "gamma", "pot", "false_alarm_rate", "target"])
    p.add_argument("--target-false-alerts-per-1000", type=float, dest="target",
                   help="method 'target': tolerated false alerts per 1,000 normal windows")  # fmt: skip
    p.add_argument("--config", type=Path, help="take the [calibration] settings from this config "
                   "(default: the bundle's own calibration settings)")  # fmt: skip
    p.add_argument("--rows", help="START:END rows of each file to use")
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.train import bundle_calibration_settings, calibrate_bundle
    from ae_monitor.model.bundle import load_bundle

    cfg = load_config(args.config).calibration if args.config else bundle_calibration_settings(load_bundle(args.bundle))
    if args.method:
        cfg = cfg.model_copy(update={"method": args.method})
    if args.target is not None:
        cfg = cfg.model_copy(update={"method": "target", "target_false_alerts_per_1000_windows": args.target})
    calibration = calibrate_bundle(args.bundle, args.data, cfg, rows=parse_rows(args.rows))
    log.info("threshold %.6g by %s on %d windows", calibration.threshold, calibration.method, calibration.n_samples)
    for note in calibration.notes:
        log.warning("%s", note)
    return 0


def _add_score(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("score", help="score files: one line per window")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (from `train`)")
    p.add_argument("paths", nargs="+", help="audio files/folders or sensor CSV files/folders")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="output format")
    p.add_argument("--out", default="-", help="output file ('-' = stdout)")
    p.add_argument("--rows", help="START:END rows (sensor) or samples (audio) of each file to score")
    p.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.evaluate import score_files
    from ae_monitor.model.bundle import load_bundle

    bundle, rows = load_bundle(args.bundle), parse_rows(args.rows)
    if args.out == "-":
        score_files(bundle, args.paths, sys.stdout, fmt=args.format, rows=rows)
        return 0
    with open(args.out, "w", encoding="utf-8", newline="") as handle:
        score_files(bundle, args.paths, handle, fmt=args.format, rows=rows)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="AUC, pAUC, F1, FAR, MAR on labelled data, with plots")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (from `train`)")
    p.add_argument("--data", nargs="+", required=True, help="labelled files/folders (each folder's files are streams)")
    p.add_argument(
        "--report",
        "--out",
        type=Path,
        required=True,
        dest="report",
        help="folder for report.json, predictions.csv, plots",
    )
    p.add_argument("--rows", help="START:END rows of each file to evaluate")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.evaluate import evaluate
    from ae_monitor.model.bundle import load_bundle

    report = evaluate(load_bundle(args.bundle), args.data, args.report, rows=parse_rows(args.rows),
                      plots=not args.no_plots)  # fmt: skip
    overall = report["overall"]
    print(" ".join(f"{k}={_fmt(overall[k])}" for k in ("auc", "pauc", "f1", "far", "mar", "precision", "recall")))
    if report.get("dcase"):
        from ae_monitor.jobs.dcase import format_table

        print(format_table(report["dcase"]))
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="stream files through the pipeline; alerts as JSON lines")
    p.add_argument("--config", type=Path, required=True, help="config file (TOML): features, alerting, replay")
    p.add_argument(
        "--input",
        "--data",
        nargs="+",
        required=True,
        dest="input",
        help="files or folders; '-' reads JSON lines from stdin",
    )
    p.add_argument("--bundle", help="bundle directory or registry://<root>/<model>@<alias> (default: "
                   "replay.bundle_path)")  # fmt: skip
    port = p.add_mutually_exclusive_group()
    port.add_argument("--metrics-port", type=int, help="serve /metrics /healthz /readyz here (0 = any free port; "
                      "default: metrics.port)")  # fmt: skip
    port.add_argument("--no-metrics", action="store_true", help="serve no HTTP endpoint")
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from ae_monitor.serve.offline import replay

    config = load_config(args.config)
    if args.metrics_port is not None or args.no_metrics:
        update = {"enabled": False} if args.no_metrics else {"enabled": True, "port": args.metrics_port}
        config = config.model_copy(update={"metrics": config.metrics.model_copy(update=update)})
    bundle = args.bundle or config.replay.bundle_path
    if bundle is None:
        raise ConfigError("no bundle given: pass --bundle or set it", key="replay.bundle_path")
    replay(config, _bundle_dir(bundle, key="--bundle" if args.bundle else "replay.bundle_path"), args.input)
    return 0


def _bundle_dir(text: str, *, key: str) -> Path:
    """A bundle directory, or the one a registry alias names now."""
    from ae_monitor.registry import AliasRef

    try:
        alias = AliasRef.parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from exc
    return Path(text) if alias is None else alias.resolve()


def _add_benchmark(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("benchmark", help="run a public benchmark protocol (SKAB) through train, calibrate, alert")
    p.add_argument("suite", choices=["skab"])
    p.add_argument("--data", type=Path, required=True, help="the SKAB data folder (valve1/, valve2/, other/)")
    p.add_argument("--out", type=Path, required=True, help="folder for predictions.csv, results.json/.md, plots")
    p.add_argument("--config", type=Path, help="config file (default: configs/sensor-skab.toml as shipped, from any "
                   "folder)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(handler=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.benchmark import run_skab
    from ae_monitor.starters import shipped_config

    config = load_config(args.config or shipped_config("sensor-skab.toml"))
    results = run_skab(config, args.data, args.out, plots=not args.no_plots)
    print(f"f1={results['f1']:.4f} far={results['far']:.4f} mar={results['mar']:.4f} ({results['n_files']} files)")
    print(f"wrote {args.out / 'results.md'}")
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="train on a synthetic machine and replay it with injected faults")
    p.add_argument("--duration", type=float, default=60.0, help="about how long the demo runs, in seconds")
    p.add_argument("--out", type=Path, help="keep the generated data and bundle here (default: a temp folder)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9108,
        help="serve /metrics /healthz /readyz on 127.0.0.1 here (0 = any free port)",
    )
    p.add_argument("--alertmanager-url", help="also send the alerts to this Alertmanager (e.g. http://127.0.0.1:9093)")
    p.add_argument("--webhook-url", help="also POST each alert's JSON to this URL")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ae_monitor.config import HttpSinkConfig, SinksConfig
    from ae_monitor.jobs.demo import demo

    sinks = SinksConfig(alertmanager=HttpSinkConfig(url=args.alertmanager_url),
                        webhook=HttpSinkConfig(url=args.webhook_url))  # fmt: skip
    if args.out is not None:
        return demo(args.out, duration_s=args.duration, metrics_port=args.metrics_port, sinks=sinks)
    with tempfile.TemporaryDirectory(prefix="ae-monitor-demo-") as tmp:
        return demo(Path(tmp), duration_s=args.duration, metrics_port=args.metrics_port, sinks=sinks)


def _add_encode(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("encode", help="store each window's latent code (compression); prints the ratio and cost")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (from `train`)")
    p.add_argument("paths", nargs="+", help="audio files/folders or sensor CSV files/folders to encode")
    p.add_argument("--out", type=Path, required=True, help="codes file to write (safetensors)")
    p.add_argument("--dtype", choices=["float32", "float16", "int8"], default="float32")
    p.add_argument("--rows", help="START:END rows (sensor) or samples (audio) of each file to encode")
    p.set_defaults(handler=_encode)


def _encode(args: argparse.Namespace) -> int:
    import json

    from ae_monitor.jobs.codec import encode_files
    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.model.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    report = encode_files(bundle, args.paths, args.out, dtype=args.dtype, rows=parse_rows(args.rows))
    print(json.dumps(report.to_dict()))
    return 0


def _add_decode(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("decode", help="rebuild windows from a codes file, as vectors and/or signals")
    p.add_argument("--bundle", type=Path, required=True, help="the bundle that encoded the codes")
    p.add_argument("--codes", type=Path, required=True)
    p.add_argument("--out", type=Path, help="vectors file to write (safetensors)")
    p.add_argument("--signals", type=Path, help="folder for one CSV (sensors) or approximate WAV (audio) per stream")
    p.set_defaults(handler=_decode)


def _decode(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.codec import decode_codes, write_decoded_signals, write_decoded_vectors
    from ae_monitor.model.bundle import load_bundle

    if args.out is None and args.signals is None:
        raise ConfigError("nothing to write: pass --out FILE, --signals DIR or both")
    bundle = load_bundle(args.bundle)
    decoded = decode_codes(bundle, args.codes)
    if args.out is not None:
        log.info("wrote %s", write_decoded_vectors(bundle, decoded, args.out))
    if args.signals is not None:
        log.info("wrote %d signal file(s) under %s", len(write_decoded_signals(bundle, decoded, args.signals)),
                 args.signals)  # fmt: skip
    return 0


def _add_denoise(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("denoise", help="clean signals with a denoising bundle, or measure its PSNR/SSIM gain")
    p.add_argument("--bundle", type=Path, required=True, help="a denoising bundle directory")
    p.add_argument("--input", type=Path, required=True, help="a file or folder of audio clips or sensor CSVs")
    p.add_argument("--out", type=Path, help="folder for the cleaned files (one input file: or a file name with "
                   "its suffix)")  # fmt: skip
    p.add_argument("--gain-snr-db", type=float, help="instead: add white noise at this SNR and print the gain")
    p.add_argument("--rows", help="START:END rows of each file (held-back normal data for --gain-snr-db)")
    p.add_argument("--seed", type=int, default=0, help="noise seed for --gain-snr-db")
    p.set_defaults(handler=_denoise)


def _denoise(args: argparse.Namespace) -> int:
    import json

    from ae_monitor.jobs.data import parse_rows
    from ae_monitor.jobs.denoise import denoise_files, measure_gain
    from ae_monitor.model.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if args.gain_snr_db is not None:
        gain = measure_gain(bundle, args.input, snr_db=args.gain_snr_db, seed=args.seed, rows=parse_rows(args.rows))
        print(json.dumps(gain.to_dict()))
        return 0
    if args.out is None:
        raise ConfigError("pass --out (where the cleaned signal goes) or --gain-snr-db")
    log.info("wrote %d cleaned file(s)", len(denoise_files(bundle, args.input, args.out)))
    return 0


def _add_sample(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sample", help="synthetic normal windows from a variational (VAE) bundle")
    p.add_argument("--bundle", type=Path, required=True, help="a variational (VAE) bundle directory")
    p.add_argument("-n", type=int, required=True, help="how many windows")
    p.add_argument("--out", type=Path, required=True, help=".safetensors (vectors) or .csv (sensor bundles, raw units)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_sample)


def _sample(args: argparse.Namespace) -> int:
    from ae_monitor.jobs.sample import sample_vectors, write_samples
    from ae_monitor.model.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    log.info("wrote %s", write_samples(bundle, sample_vectors(bundle, args.n, seed=args.seed), args.out))
    return 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="the daemon: consume Kafka, score, alert, serve /metrics /healthz /readyz")
    p.add_argument("--config", type=Path, required=True, help="config file (TOML; see docs/serve.md)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ae_monitor.serve.app import StartupInterrupted, serve

    config = load_config(args.config)
    trainer = None
    if any(route.learn != "none" for route in config.routes):  # training imports torch: only when a route learns
        from ae_monitor.jobs.learn import StreamTrainer

        trainer = StreamTrainer()
    configure_logging(level=logging.WARNING if args.quiet else logging.INFO,
                      json_format=config.service.log_format == "json")  # fmt: skip
    try:
        return serve(config, trainer=trainer)
    except StartupInterrupted as stopped:
        log.warning("%s", stopped)
        # The Kafka client the signal interrupted cannot be closed; left to the interpreter's exit, its
        # coroutines fail noisily ("Exception ignored in: <coroutine ... WakeupNotifier ...> ReferenceError").
        # Nothing is consumed, committed or held yet, so the process ends here, with a normal stop's status.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
