"""Many small models in one call: the networks of slots that share an architecture (per-stream learned models,
issue 12) run as one vectorised forward pass over their stacked weights instead of one call per slot.

Slots share a call when their bundles have the same network class, model settings, parameter shapes and vector
shape, with the torch backend. Each slot's scorer then forms its scores from its own rows of the output exactly
as when it runs its network itself (`Scorer.score_output`): aggregation, group scales, recent steps, the linear
monitor and the thresholds stay per slot. These slots score alone: the onnx backend (one session per bundle),
recurrent networks (torch.vmap has no batching rule for aten::lstm), an architecture no other slot of the batch
has, and a slot whose vectors would mostly pad a call (see `_calls`).

The stacked weights of each architecture are built on first use and kept: a slot replaced under the same name
(a model promoted, reloaded or retrained) overwrites its own row in place, a new slot (a stream learned) or a
forgotten one (evicted, moved away) rebuilds the stack at its next use.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ae_monitor.engine.slots import Slot
from ae_monitor.scoring import OnnxScorer, VectorScores

if TYPE_CHECKING:
    import torch

    from ae_monitor.model.networks import Autoencoder

F32 = npt.NDArray[np.float32]
GroupKey = tuple[Hashable, ...]


def group_key(slot: Slot) -> GroupKey | None:
    """What slots must share to run in one call (None: this slot always scores alone)."""
    bundle = slot.bundle
    if bundle.onnx is not None or isinstance(slot.scorer, OnnxScorer):
        return None
    from torch import nn

    network = bundle.network
    if any(isinstance(module, nn.RNNBase) for module in network.modules()):
        return None  # torch.vmap cannot batch aten::lstm over stacked weights
    tensors = itertools.chain(network.named_parameters(), network.named_buffers())
    shapes = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in tensors)
    return (type(network), bundle.extractor.vector_shape, bundle.model_config.model_dump_json(), shapes)


class _Stack:
    """The weights of one architecture's slots stacked along a new first axis, and a weightless copy of the
    network that runs any of them (torch.func.functional_call under torch.vmap)."""

    def __init__(self, names: list[str], slots: list[Slot]) -> None:
        import copy

        import torch
        from torch.func import functional_call, stack_module_state

        networks: list[Autoencoder] = [slot.bundle.network.eval() for slot in slots]
        with torch.no_grad():
            params, buffers = stack_module_state(networks)
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        self.rows = {name: row for row, name in enumerate(names)}
        self.slots = dict(zip(names, slots, strict=True))
        skeleton = copy.deepcopy(networks[0]).to("meta").eval()

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
            out = functional_call(skeleton, (params, buffers), (x,))
            return tuple(t for t in out if t is not None)

        self._run = torch.vmap(one)

    def replace(self, name: str, slot: Slot) -> None:
        """Slot `name`'s new bundle, of the same architecture, into its own row."""
        import torch

        network = slot.bundle.network.eval()
        with torch.no_grad():
            for key, tensor in itertools.chain(network.named_parameters(), network.named_buffers()):
                (self.params if key in self.params else self.buffers)[key][self.rows[name]].copy_(tensor)
        self.slots[name] = slot

    def run(self, names: list[str], data: list[F32]) -> list[Any]:
        """Each slot's network output (a ModelOutput) for its own vectors, from one call over all of them, padded
        to the most vectors any of them has."""
        import torch

        from ae_monitor.model.networks import ModelOutput

        rows = [self.rows[name] for name in names]
        counts = [len(d) for d in data]
        x = np.zeros((len(data), max(counts), data[0].shape[1]), dtype=np.float32)
        for i, vectors in enumerate(data):
            x[i, : len(vectors)] = vectors
        with torch.inference_mode():
            params, buffers = self.params, self.buffers
            if rows != list(range(len(self.rows))):
                index = torch.tensor(rows)
                params = {k: v.index_select(0, index) for k, v in params.items()}
                buffers = {k: v.index_select(0, index) for k, v in buffers.items()}
            out = self._run(params, buffers, torch.from_numpy(x))
        reconstruction, code, *vae = out
        return [ModelOutput(reconstruction[i, :n], code[i, :n], *(t[i, :n] for t in vae))
                for i, n in enumerate(counts)]  # fmt: skip


@dataclass
class _Member:
    slot: Slot
    key: GroupKey | None


class ModelGroups:
    """Scores the slots of a micro-batch that share an architecture in one call per group (see the module doc).

    `max_rows`: the most vectors (padding included) one call takes, as `scoring.batch_size` bounds a slot's own
    calls."""

    def __init__(self, *, max_rows: int = 1024) -> None:
        self.max_rows = max_rows
        self._members: dict[str, _Member] = {}
        self._stacks: dict[GroupKey, _Stack] = {}

    def score(self, slots: Mapping[str, Slot], data: Mapping[str, F32]) -> dict[str, VectorScores]:
        """The scores of the slots named in `data` (their vectors) that could share a call with others; the rest
        are left out, for their own scorer."""
        by_key: dict[GroupKey, list[str]] = {}
        for name in data:
            key = self._key(name, slots[name])
            if key is not None:
                by_key.setdefault(key, []).append(name)
        scores: dict[str, VectorScores] = {}
        for key, names in by_key.items():
            if len(names) < 2:
                continue
            stack = self._stack(key, slots)
            for call in _calls(names, {name: len(data[name]) for name in names}, self.max_rows):
                call.sort(key=stack.rows.__getitem__)  # in row order: all of a group's rows need no gathering
                outputs = stack.run(call, [data[name] for name in call])
                for name, output in zip(call, outputs, strict=True):
                    scores[name] = slots[name].scorer.score_output(data[name], output)
        return scores

    def forget(self, name: str) -> None:
        """Slot `name` is gone: its group's stack is rebuilt without it at its next use."""
        member = self._members.pop(name, None)
        if member is not None and member.key is not None:
            self._stacks.pop(member.key, None)

    def _key(self, name: str, slot: Slot) -> GroupKey | None:
        member = self._members.get(name)
        if member is not None and member.slot is slot:
            return member.key
        key = group_key(slot)
        old_key = None if member is None else member.key
        stack = None if old_key is None else self._stacks.get(old_key)
        if stack is not None and key == old_key and name in stack.rows:
            stack.replace(name, slot)  # a new model of the same architecture: its row, not a rebuild
        else:
            self.forget(name)
            if key is not None:
                self._stacks.pop(key, None)
        self._members[name] = _Member(slot, key)
        return key

    def _stack(self, key: GroupKey, slots: Mapping[str, Slot]) -> _Stack:
        stack = self._stacks.get(key)
        if stack is None:
            names = [n for n, m in self._members.items() if m.key == key and slots.get(n) is m.slot]
            self._stacks[key] = stack = _Stack(names, [slots[n] for n in names])
        return stack


def _calls(names: list[str], counts: Mapping[str, int], max_rows: int) -> list[list[str]]:
    """The slots of one group split into calls: most vectors first, a slot joins a call while the call's padded
    rows stay within `max_rows` and 1.5 times its real vectors (a slot with hundreds of vectors beside many
    with one goes alone rather than make them all pad to hundreds). A call of one slot is left out: its scorer
    runs it as fast."""
    calls: list[list[str]] = []
    call: list[str] = []
    real = 0
    for name in sorted(names, key=lambda n: -counts[n]):
        widest = counts[call[0]] if call else counts[name]
        padded = (len(call) + 1) * widest
        if call and (padded > max_rows or 2 * padded > 3 * (real + counts[name])):
            calls.append(call)
            call, real = [], 0
        call.append(name)
        real += counts[name]
    calls.append(call)
    return [c for c in calls if len(c) > 1]
