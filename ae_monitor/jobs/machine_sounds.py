"""Synthetic machine sounds with the faults people listen for, generated from fixed seeds (the audio benchmark).

A machine is a `MachineSpec`: a kind of sound source, its shaft rate, its background noise SNR and one fault.
`normal(spec, seconds)` and `abnormal(spec, seconds)` render mono float32 audio at 16 kHz; the same spec and
seconds always give the same samples (the seed is part of the spec), and the normal and abnormal recordings come
from different random streams of the same machine.

Sources:
- "fan": shaft harmonics, a blade-pass tone series (blades x shaft), broadband flow noise shaped by the load;
- "pump": stronger low shaft harmonics, vane-pass tones, low-passed flow noise;
- "compressor": a rich harmonic series (many orders of the shaft rate) and a little flow noise;
- "valve": periodic actuations, each a click (two damped resonances) and a short burst of flow hiss;
- "belt": a belt drive, two pulleys' harmonics and belt-pass ticks.
Speed and load wander slowly (a few percent over seconds) in every recording, normal or not.

Faults (`MachineSpec.fault`):
- "bearing": periodic impulses at an outer-race defect frequency (3.58 x shaft) ringing a 2.8 kHz resonance;
- "imbalance": a 1x component and a 1x amplitude modulation of the whole machine;
- "looseness": strong 2x and 3x harmonics and a half-order subharmonic;
- "cavitation": random broadband bursts above 2 kHz;
- "sticking": a valve that misses every other actuation and opens softly (quieter, simpler);
- "leaking": a valve that hisses faintly between actuations;
- "squeal": intermittent belt squeal, a tone near 2.5 kHz gliding in pitch;
- "flow_loss": a clogged fan: blade-pass tones and flow noise drop (quieter, simpler);
- "harmonic_loss": a compressor whose upper orders vanish (simpler);
- "slowdown": a pump running 8 % slower at lower load (quieter).
Background noise (a pink-ish factory hum and hiss) is mixed in at `snr_db` relative to the machine's normal power.

    >>> spec = SUITE[0]
    >>> normal(spec, 1.0).shape, normal(spec, 1.0).dtype
    ((16000,), dtype('float32'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, sosfilt

__all__ = ["SAMPLE_RATE_HZ", "SUITE", "MachineSpec", "abnormal", "normal"]

SAMPLE_RATE_HZ = 16000

Source = Literal["fan", "pump", "compressor", "valve", "belt"]
Fault = Literal[
    "bearing",
    "imbalance",
    "looseness",
    "cavitation",
    "sticking",
    "leaking",
    "squeal",
    "flow_loss",
    "harmonic_loss",
    "slowdown",
]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MachineSpec:
    """One synthetic machine: its sound source, shaft rate (Hz), background SNR (dB), fault and seed."""

    name: str
    source: Source
    shaft_hz: float
    snr_db: float
    fault: Fault
    seed: int
    blades: int = 6


# Several faults make the sound quieter or simpler than normal (sticking, flow_loss, harmonic_loss, slowdown):
# a detector that ranks by loudness or spectral richness is inverted on them.
SUITE: tuple[MachineSpec, ...] = (
    MachineSpec("fan-bearing", "fan", 24.0, 6.0, "bearing", 101),
    MachineSpec("fan-imbalance", "fan", 29.0, 0.0, "imbalance", 102, blades=7),
    MachineSpec("fan-flow-loss", "fan", 26.0, 6.0, "flow_loss", 103, blades=5),
    MachineSpec("pump-looseness", "pump", 24.5, 6.0, "looseness", 104),
    MachineSpec("pump-cavitation", "pump", 49.0, 0.0, "cavitation", 105),
    MachineSpec("pump-slowdown", "pump", 40.0, 6.0, "slowdown", 106),
    MachineSpec("compressor-harmonic-loss", "compressor", 50.0, 6.0, "harmonic_loss", 107),
    MachineSpec("compressor-bearing", "compressor", 60.0, -6.0, "bearing", 108),
    MachineSpec("valve-sticking", "valve", 1.25, 6.0, "sticking", 109),
    MachineSpec("valve-leaking", "valve", 1.6, 0.0, "leaking", 110),
    MachineSpec("belt-squeal", "belt", 20.0, 0.0, "squeal", 111),
    MachineSpec("belt-looseness", "belt", 17.0, -6.0, "looseness", 112),
)


def normal(spec: MachineSpec, seconds: float) -> F32:
    """`seconds` of the healthy machine with background noise."""
    return _render(spec, seconds, fault=None, stream=0)


def abnormal(spec: MachineSpec, seconds: float) -> F32:
    """`seconds` of the same machine with its fault, from another random stream than `normal`."""
    return _render(spec, seconds, fault=spec.fault, stream=1)


def _render(spec: MachineSpec, seconds: float, *, fault: Fault | None, stream: int) -> F32:
    n = round(seconds * SAMPLE_RATE_HZ)
    rng = np.random.default_rng([spec.seed, stream])
    t = np.arange(n) / SAMPLE_RATE_HZ
    speed = 1.0 + 0.02 * _wander(rng, n, 3.0)  # slow speed changes, about +-2 %
    load = 1.0 + 0.15 * _wander(rng, n, 2.0)  # slow load changes, about +-15 %
    if fault == "slowdown":
        speed, load = 0.92 * speed, 0.7 * load
    phase = 2 * np.pi * np.cumsum(spec.shaft_hz * speed) / SAMPLE_RATE_HZ  # shaft angle
    machine = _SOURCES[spec.source](spec, rng, t, phase, load, fault)
    if fault is not None and fault in _ADDED:
        machine = _ADDED[fault](spec, rng, t, phase, machine)
    # The background level is fixed by the machine's *normal* power, so a quieter fault lowers the total level.
    level = _normal_rms(spec) * 10 ** (-spec.snr_db / 20)
    out = machine + level * _background(rng, n)
    return (0.1 * out / _normal_rms(spec)).astype(np.float32)


def _normal_rms(spec: MachineSpec) -> float:
    rng = np.random.default_rng([spec.seed, 99])
    n = SAMPLE_RATE_HZ * 2
    t = np.arange(n) / SAMPLE_RATE_HZ
    phase = 2 * np.pi * spec.shaft_hz * t
    return float(np.sqrt(np.mean(_SOURCES[spec.source](spec, rng, t, phase, np.ones(n), None) ** 2)))


def _wander(rng: np.random.Generator, n: int, period_s: float) -> F64:
    """A smooth random curve in about [-1, 1] changing over `period_s` seconds."""
    knots = max(2, int(n / SAMPLE_RATE_HZ / period_s) + 2)
    values = rng.uniform(-1, 1, knots)
    return np.asarray(np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values), dtype=np.float64)


def _band_noise(rng: np.random.Generator, n: int, low_hz: float, high_hz: float) -> F64:
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    noise = sosfilt(sos, rng.standard_normal(n))
    return np.asarray(noise / (noise.std() + 1e-12), dtype=np.float64)


def _harmonics(phase: F64, orders: dict[float, float]) -> F64:
    return np.asarray(sum(a * np.sin(k * phase + k) for k, a in orders.items()), dtype=np.float64)


def _background(rng: np.random.Generator, n: int) -> F64:
    hum = _band_noise(rng, n, 40, 400)
    hiss = _band_noise(rng, n, 400, 7800)
    mains = np.sin(2 * np.pi * 50 * np.arange(n) / SAMPLE_RATE_HZ)
    out = hum + 0.5 * hiss + 0.3 * mains
    return np.asarray(out / out.std(), dtype=np.float64)


def _fan(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, load: F64, fault: Fault | None) -> F64:
    shaft = _harmonics(phase, {1: 0.3, 2: 0.15, 3: 0.08})
    blade_gain = 0.25 if fault == "flow_loss" else 1.0
    flow_gain = 0.4 if fault == "flow_loss" else 1.0
    blades = _harmonics(spec.blades * phase, {1: 0.5, 2: 0.25, 3: 0.12})
    flow = _band_noise(rng, len(t), 150, 6000)
    return shaft + blade_gain * load * blades + flow_gain * 0.6 * load * flow


def _pump(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, load: F64, fault: Fault | None) -> F64:
    shaft = _harmonics(phase, {1: 0.6, 2: 0.3, 3: 0.15, 4: 0.08})
    vanes = _harmonics(spec.blades * phase, {1: 0.35, 2: 0.15})
    flow = _band_noise(rng, len(t), 60, 2500)
    return shaft + load * vanes + 0.5 * load * flow


def _compressor(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, load: F64, fault: Fault | None) -> F64:
    top = 6 if fault == "harmonic_loss" else 40
    orders = {float(k): 0.5 / k**0.6 for k in range(1, top + 1)}
    return load * _harmonics(phase, orders) + 0.15 * _band_noise(rng, len(t), 200, 7000)


def _valve(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, load: F64, fault: Fault | None) -> F64:
    n = len(t)
    out = 0.05 * _band_noise(rng, n, 100, 1000)  # the line's steady flow
    # One actuation per shaft turn: `phase` crossing a multiple of 2 pi.
    cycles = np.floor(phase / (2 * np.pi))
    starts = np.flatnonzero(np.diff(cycles) > 0) + 1
    click_t = np.arange(int(0.06 * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    click = np.exp(-click_t / 0.008) * (np.sin(2 * np.pi * 1500 * click_t) + 0.6 * np.sin(2 * np.pi * 4200 * click_t))
    hiss_n = int(0.2 * SAMPLE_RATE_HZ)
    hiss_env = np.sin(np.pi * np.arange(hiss_n) / hiss_n) ** 2
    for i, start in enumerate(starts.tolist()):
        if fault == "sticking" and i % 2 == 1:
            continue  # stuck: this actuation never happens
        gain = (0.35 if fault == "sticking" else 1.0) * float(rng.uniform(0.85, 1.15))
        _add(out, start, 2.0 * gain * click)
        _add(out, start + len(click_t) // 2, 0.5 * gain * hiss_env * _band_noise(rng, hiss_n, 800, 5000))
    if fault == "leaking":
        out += 0.06 * _band_noise(rng, n, 3000, 7000)
    return out


def _belt(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, load: F64, fault: Fault | None) -> F64:
    drive = _harmonics(phase, {1: 0.4, 2: 0.2, 3: 0.1})
    driven = _harmonics(phase * 2.3, {1: 0.25, 2: 0.1})
    ticks: F64 = np.maximum(np.sin(phase * 0.37), 0.0) ** 40 * _band_noise(rng, len(t), 1000, 4000)
    return drive + load * driven + 0.3 * ticks + 0.2 * _band_noise(rng, len(t), 100, 3000)


def _add(out: F64, start: int, burst: F64) -> None:
    stop = min(len(out), start + len(burst))
    if stop > start:
        out[start:stop] += burst[: stop - start]


def _bearing(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, machine: F64) -> F64:
    ring_t = np.arange(int(0.01 * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    ring = np.exp(-ring_t / 0.0015) * np.sin(2 * np.pi * 2800 * ring_t)
    hits = np.floor(phase * 3.58 / (2 * np.pi))
    impulses = np.zeros_like(machine)
    impulses[np.flatnonzero(np.diff(hits) > 0) + 1] = rng.uniform(0.6, 1.0, int((np.diff(hits) > 0).sum()))
    return machine + 1.2 * np.convolve(impulses, ring)[: len(machine)]


def _imbalance(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, machine: F64) -> F64:
    return machine * (1 + 0.4 * np.sin(phase)) + 0.8 * np.sin(phase)


def _looseness(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, machine: F64) -> F64:
    return machine + _harmonics(phase, {0.5: 0.3, 2: 0.7, 3: 0.5, 4: 0.2})


def _cavitation(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, machine: F64) -> F64:
    bursts = np.zeros_like(machine)
    for start in rng.integers(0, len(machine), int(15 * len(machine) / SAMPLE_RATE_HZ)):
        length = int(rng.uniform(0.005, 0.02) * SAMPLE_RATE_HZ)
        _add(bursts, int(start), np.hanning(length) * rng.standard_normal(length))
    sos = butter(4, 2000, btype="highpass", fs=SAMPLE_RATE_HZ, output="sos")
    return machine + 1.5 * np.asarray(sosfilt(sos, bursts), dtype=np.float64)


def _squeal(spec: MachineSpec, rng: np.random.Generator, t: F64, phase: F64, machine: F64) -> F64:
    gate: F64 = (np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) > 0.3).astype(np.float64)
    gate = np.convolve(gate, np.hanning(800) / np.hanning(800).sum(), mode="same")
    pitch = 2500 + 150 * np.sin(2 * np.pi * 3.0 * t)
    tone: F64 = np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE_HZ)
    return machine + 0.35 * gate * tone


_SOURCES = {"fan": _fan, "pump": _pump, "compressor": _compressor, "valve": _valve, "belt": _belt}
# Faults that add a component to the healthy sound (the others change the source itself).
_ADDED = {
    "bearing": _bearing,
    "imbalance": _imbalance,
    "looseness": _looseness,
    "cavitation": _cavitation,
    "squeal": _squeal,
}
