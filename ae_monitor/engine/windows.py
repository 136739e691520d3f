"""Scoring per bundle: the vectors of a micro-batch through each bundle's network, then windows with their times.

All vectors routed to a slot in one micro-batch go through its network in one batched
pass; sensor vectors are windows themselves, audio vectors are grouped into windows per stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from ae_monitor.engine.batch import Scored
from ae_monitor.engine.slots import Slot
from ae_monitor.engine.streams import Pushed, Segment
from ae_monitor.features.sensor import SensorExtractor
from ae_monitor.metrics import Metrics
from ae_monitor.model.bundle import Bundle
from ae_monitor.records import CleanedWindow, IntArray, VectorCode, WindowScore, WindowTable
from ae_monitor.scoring import OUT_OF_RANGE_Z, ScoredWindow, VectorScores, newest_z
from ae_monitor.threshold import OnlineThresholds, TrackedThresholds

F64 = npt.NDArray[np.float64]

log = logging.getLogger(__name__)


@dataclass
class VectorOutputs:
    """Per-vector outputs some deployments ask for: latent codes (compression) and reconstructions (denoising)."""

    want_codes: bool = False
    want_cleaned: bool = False
    codes: list[VectorCode] = field(default_factory=list)
    cleaned: list[CleanedWindow] = field(default_factory=list)

    @property
    def wanted(self) -> bool:
        return self.want_codes or self.want_cleaned


def vectors_of(items: list[Pushed]) -> npt.NDArray[np.float32]:
    """The vectors pushed for one slot in a micro-batch, as one array."""
    return np.concatenate([item.vectors.data for item in items]) if len(items) > 1 else items[0].vectors.data


def score_slot(slot: Slot, items: list[Pushed], *, metrics: Metrics, outputs: VectorOutputs,
               data: npt.NDArray[np.float32] | None = None, scores: VectorScores | None = None) -> Scored:  # fmt: skip
    """Score every vector pushed for `slot` in one pass; windows come back as one table. `data`: the vectors
    (`vectors_of(items)`), and `scores`, theirs when the engine scored them with other slots' (engine.grouped)."""
    data = vectors_of(items) if data is None else data
    if scores is None:
        started = time.perf_counter()
        scores = slot.scorer.score(data)
        metrics.batch_seconds.observe(time.perf_counter() - started)
    segments = [seg for item in items for seg in item.segments]
    first = np.concatenate([item.vectors.first_sample for item in items])
    end = np.concatenate([item.vectors.end_sample for item in items])
    if outputs.wanted:
        _vector_outputs(slot, segments, data, first, end, outputs)
    if slot.plan == (1, 1):
        scored = _vector_windows(slot, segments, scores, first, end)
        _watch_range(slot, segments, data, metrics)
    else:
        scored = _grouped_windows(slot, segments, scores, first, end)
    if slot.bundle.calibration is not None:  # always so: a Slot refuses an uncalibrated bundle
        table = scored.table
        scored = Scored(slot, replace(table, surprise=slot.bundle.calibration.surprises(table.score)), scored.spans)
    if slot.online is not None:
        scored = Scored(slot, _with_thresholds(scored.table, slot.online), scored.spans)
        if isinstance(slot.online, TrackedThresholds):
            _note_tracked_levels(slot.online, segments)
    if slot.drift is not None:
        slot.drift.observe_many(scored.table.score.tolist())
    return scored


def _vector_windows(slot: Slot, segments: list[Segment], scores: VectorScores, first: IntArray,
                    end: IntArray) -> Scored:  # fmt: skip
    """Each vector is a window (sensors): every column of the table in one vectorised step."""
    start_s, end_s = _vector_times(segments, first, end)
    basis = scores.share_basis
    totals = basis.sum(axis=1, keepdims=True)
    shares = np.divide(basis, totals, out=np.zeros_like(basis), where=totals > 0)
    names: list[str] = []
    spans, row = [], 0
    for seg in segments:
        names += [seg.stream] * seg.count
        spans.append((seg.stream, row, row + seg.count))
        row += seg.count
        seg.state.warming = False
        seg.state.last_window_start = int(first[row - 1])
    threshold = np.full(len(names), slot.bundle.threshold)
    table = WindowTable(slot.bundle.name, names, start_s, end_s, scores.errors, threshold, shares)
    return Scored(slot, table, spans)


def _watch_range(slot: Slot, segments: list[Segment], data: npt.NDArray[np.float32], metrics: Metrics) -> None:
    """Count sensor windows whose newest sample is out of the training range, and log each stream's excursion
    once when it starts and once when it ends: such windows score high because they are unlike training."""
    z = newest_z(slot.bundle, data)
    if z is None:
        return
    beyond = np.abs(z) > OUT_OF_RANGE_Z
    names = slot.bundle.extractor.group_names
    for channel in np.flatnonzero(beyond.any(axis=0)).tolist():
        metrics.out_of_range.labels(slot.bundle.name, names[channel]).inc(int(beyond[:, channel].sum()))
    row = 0
    for seg in segments:
        rows = slice(row, row + seg.count)
        row += seg.count
        now = bool(beyond[rows][-1].any()) if seg.count else seg.state.out_of_range
        if now and not seg.state.out_of_range:
            c = int(np.argmax(np.abs(z[rows][-1])))
            log.warning("stream %s: %s at z = %+.1f: outside the range the model was trained on (|z| > %g); its "
                        "windows score high because they are unlike training, whatever the cause", seg.stream,
                        names[c], float(z[rows][-1, c]), OUT_OF_RANGE_Z)  # fmt: skip
        elif seg.state.out_of_range and not now:
            log.info("stream %s: back inside the training range", seg.stream)
        seg.state.out_of_range = now


def _grouped_windows(slot: Slot, segments: list[Segment], scores: VectorScores, first: IntArray,
                     end: IntArray) -> Scored:  # fmt: skip
    """Windows of several vectors (audio), per stream through its WindowAggregator."""
    windows: list[WindowScore] = []
    spans, offset = [], 0
    for seg in segments:
        part = scores.slice(offset, offset + seg.count)
        made = seg.state.windows.push(part, first[offset : offset + seg.count], end[offset : offset + seg.count])
        offset += seg.count
        spans.append((seg.stream, len(windows), len(windows) + len(made)))
        windows += [_window_score(seg, slot.bundle, window) for window in made]
    return Scored(slot, _table(slot.bundle, windows), spans)


def _window_score(seg: Segment, bundle: Bundle, window: ScoredWindow) -> WindowScore:
    state = seg.state
    state.warming = False
    state.last_window_start = int(window.start)
    start_s, end_s = state.clock.time_of(int(window.start)), state.clock.end_of(int(window.end))
    return WindowScore(seg.stream, bundle.name, start_s, end_s, window.score, bundle.threshold, window.contributions)


def _vector_times(segments: list[Segment], first: IntArray, end: IntArray) -> tuple[F64, F64]:
    """Epoch seconds of each vector's start and end, in one pass over all segments (one clock kind per slot)."""
    clocks = [seg.state.clock for seg in segments]
    counts = np.array([seg.count for seg in segments])
    return type(clocks[0]).vector_times(clocks, counts, first, end)


def _vector_outputs(slot: Slot, segments: list[Segment], data: npt.NDArray[np.float32], first: IntArray,
                    end: IntArray, outputs: VectorOutputs) -> None:  # fmt: skip
    bundle = slot.bundle
    start_s, end_s = _vector_times(segments, first, end)
    spans = list(zip([s.stream for s in segments for _ in range(s.count)], start_s.tolist(), end_s.tolist(),
                     strict=True))  # fmt: skip
    if outputs.want_codes:
        codes = slot.scorer.encode(data).tolist()
        outputs.codes += [VectorCode(stream, bundle.name, bundle.version, start, stop, tuple(code))
                          for (stream, start, stop), code in zip(spans, codes, strict=True)]  # fmt: skip
    if outputs.want_cleaned:
        outputs.cleaned += _cleaned_windows(slot, spans, slot.scorer.reconstruct(data))


def _cleaned_windows(slot: Slot, spans: list[tuple[str, float, float]],
                     recon: npt.NDArray[np.float32]) -> list[CleanedWindow]:  # fmt: skip
    bundle, unscale = slot.bundle, _unscaler(slot.bundle)
    out = []
    for (stream, start, end), row in zip(spans, recon, strict=True):
        values = unscale(row) if unscale is not None else {}
        vector = () if values else tuple(row.tolist())
        out.append(CleanedWindow(stream, bundle.name, bundle.version, start, end, values, vector))
    return out


def _unscaler(bundle: Bundle) -> Callable[[npt.NDArray[np.float32]], dict[str, tuple[float, ...]]] | None:
    """Turns a reconstructed sensor window back into raw units per channel (None where that is not possible)."""
    extractor = bundle.extractor
    if not isinstance(extractor, SensorExtractor) or extractor.cfg.differences:
        return None
    offset, scale, _ = extractor.scaling_arrays()
    shape = extractor.vector_shape

    def unscale(row: npt.NDArray[np.float32]) -> dict[str, tuple[float, ...]]:
        raw = row.reshape(shape) * scale + offset
        return {name: tuple(raw[:, c].tolist()) for c, name in enumerate(extractor.group_names)}

    return unscale


def _table(bundle: Bundle, windows: list[WindowScore]) -> WindowTable:
    groups = len(bundle.extractor.group_names)
    return WindowTable(
        bundle.name,
        [w.stream for w in windows],
        np.array([w.start_s for w in windows], dtype=np.float64),
        np.array([w.end_s for w in windows], dtype=np.float64),
        np.array([w.score for w in windows], dtype=np.float64),
        np.array([w.threshold for w in windows], dtype=np.float64),
        np.array([w.contributions for w in windows], dtype=np.float64).reshape(len(windows), groups),
    )


# A stream's tracked median is republished with its alert state when it moved by more than this fraction.
TRACKED_REPUBLISH_CHANGE = 0.1


def _note_tracked_levels(online: TrackedThresholds, segments: list[Segment]) -> None:
    """Mark for persistence the alert states whose tracked median moved noticeably (bounded state-topic traffic)."""
    for seg in segments:
        median, alert = online.median(seg.stream), seg.state.alert
        if median is None:
            continue
        saved = alert.tracked_median
        if saved is None or abs(median - saved) > TRACKED_REPUBLISH_CHANGE * max(abs(saved), 1e-300):
            alert.tracked_median = median
            seg.state.alert_changed = True


def _with_thresholds(table: WindowTable, online: OnlineThresholds | TrackedThresholds) -> WindowTable:
    """The table with each window judged against its stream's live threshold (DSPOT or tracked), in order."""
    thresholds = online.judge(table.streams, table.score)
    return replace(table, threshold=thresholds)
