"""One loaded bundle and what scores with it: scorer, alert policy, window plan, stream clocks, live thresholds,
drift watch. The engine keeps one `Slot` per bundle and swaps it whole on a reload."""

from __future__ import annotations

from collections.abc import Callable

from ae_monitor.alerting import AlertPolicy
from ae_monitor.config import AlertingConfig, CalibrationConfig, DriftConfig
from ae_monitor.drift import DriftWatch
from ae_monitor.errors import BundleError
from ae_monitor.features.clock import StreamClock, clock_factory
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle
from ae_monitor.scoring import scorer_for, window_plan
from ae_monitor.threshold import OnlineThresholds, TrackedThresholds


class Slot:
    """One loaded bundle and what scores with it."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        alerting: AlertingConfig,
        batch_size: int,
        drift: DriftConfig,
        metrics: Metrics,
        online: CalibrationConfig | None = None,
    ) -> None:
        if bundle.calibration is None:
            raise BundleError("the bundle has no calibrated threshold; run `ae-monitor calibrate`", field="calibration")
        self.bundle = bundle
        self.scorer = scorer_for(bundle, batch_size=batch_size)
        self.policy = AlertPolicy(
            alerting,
            bundle_name=bundle.name,
            bundle_version=bundle.version,
            group_names=bundle.extractor.group_names,
            calibration=bundle.calibration,
        )
        self.plan = window_plan(bundle.features)
        self.new_clock: Callable[[], StreamClock] = clock_factory(bundle.features)
        # A clock of this bundle's kind, asked only whether consecutive records join into one block.
        self.clock_rules: StreamClock = self.new_clock()
        # Records stamp each sample (sensors): SampleRows take the columnar lane.
        self.stamps_each_sample = self.clock_rules.stamps_each_sample
        self.online = online_thresholds(bundle, online)
        publish = metrics.score_drift.labels(bundle.name).set
        self.drift = (
            DriftWatch.from_config(drift, bundle.calibration.reference_quantiles, bundle=bundle.name, publish=publish)
            if drift.enabled
            else None
        )


def online_thresholds(bundle: Bundle, cfg: CalibrationConfig | None) -> OnlineThresholds | TrackedThresholds | None:
    """The per-stream live thresholds `cfg.online` asks for (None = the bundle's fixed threshold)."""
    if cfg is None or cfg.online == "none" or bundle.calibration is None:
        return None
    if cfg.online == "track":
        return TrackedThresholds(bundle.calibration, cfg)
    if bundle.calibration_scores is None:
        raise BundleError(
            "calibration.online = 'dspot' needs the calibration scores; recalibrate the bundle with this version",
            field="calibration.safetensors",
        )
    # Short calibration data starts the live thresholds at the bundle's own (they follow each stream from there).
    return OnlineThresholds(bundle.calibration_scores, cfg, fallback_threshold=bundle.threshold)
