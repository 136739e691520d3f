"""Many small models in one call: the networks of slots that share an architecture (per-stream learned models,
issue 12) run as one vectorised forward pass over their stacked weights instead of one call per slot.

Slots share a call when their bundles have the same network class, model settings, parameter shapes and vector
shape, with the torch backend. Each slot's scorer then forms its scores from its own rows of the output exactly
as when it runs its network itself (`Scorer.score_output`): aggregation, group scales, recent steps, the linear
monitor and the thresholds stay per slot. These slots score alone: the onnx backend (one session per bundle),
recurrent networks (torch.vmap has no batching rule for aten::lstm), an architecture no other slot of the batch
has, and a slot whose vectors would mostly pad a call (see `_calls`).

The stacked weights of each architecture are kept from one micro-batch to the next and change only where a slot
changes: a slot replaced under the same name (a model promoted, reloaded or retrained) overwrites its own row, a new
slot (a stream learned or loaded) takes a row, a forgotten one (its stream evicted or moved away) frees its row, and
a stack more than half free is compacted, so the memory of streams that left is given back.
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
# A stack with more free rows than used ones, and more than this many, is compacted (a few free rows are kept for
# the streams that come and go).
MIN_ROWS_TO_COMPACT = 64


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
    """The weights of one architecture's slots, one row each along a new first axis, and a weightless copy of the
    network that runs any rows of them (torch.func.functional_call under torch.vmap).

    Rows are written in place: a slot's new bundle overwrites its row, a new slot takes a freed row or a new one
    (the tensors grow by what the new slots of a batch need and at least a quarter, so adding N slots one by one
    copies O(N) weights in all), a forgotten slot frees its row. Once more than half the rows are free the stack is
    compacted to the used ones."""

    def __init__(self, network: Autoencoder) -> None:
        import copy

        import torch
        from torch.func import functional_call

        self.params = {k: torch.empty((0, *v.shape), dtype=v.dtype) for k, v in network.named_parameters()}
        self.buffers = {k: torch.empty((0, *v.shape), dtype=v.dtype) for k, v in network.named_buffers()}
        self.rows: dict[str, int] = {}
        self._free: list[int] = []
        skeleton = copy.deepcopy(network).to("meta").eval()

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
            out = functional_call(skeleton, (params, buffers), (x,))
            return tuple(t for t in out if t is not None)

        self._run = torch.vmap(one)

    def put(self, slots: Mapping[str, Slot]) -> None:
        """Each slot's bundle into its row (a free one or a new one when it has none)."""
        import torch

        missing = sum(name not in self.rows for name in slots) - len(self._free)
        if missing > 0:
            self._grow(max(missing, self.size // 4))
        for name, slot in slots.items():
            if name not in self.rows:
                self.rows[name] = self._free.pop()
            row, network = self.rows[name], slot.bundle.network.eval()
            with torch.no_grad():
                for key, tensor in itertools.chain(network.named_parameters(), network.named_buffers()):
                    (self.params if key in self.params else self.buffers)[key][row].copy_(tensor)

    def remove(self, name: str) -> None:
        row = self.rows.pop(name, None)
        if row is not None:
            self._free.append(row)
            if len(self._free) > max(MIN_ROWS_TO_COMPACT, len(self.rows)):
                self._compact()

    @property
    def size(self) -> int:
        """Rows held, used or free."""
        return int(next(iter(self.params.values())).shape[0])

    def _compact(self) -> None:
        """Down to the used rows (in their order): streams evicted or moved to another process give their memory
        back instead of leaving the stack at its largest. Runs once more than half the rows are free, so a shrinking
        fleet copies O(N) weights in all."""
        import torch

        names = sorted(self.rows, key=self.rows.__getitem__)
        index = torch.tensor([self.rows[name] for name in names], dtype=torch.long)
        for tensors in (self.params, self.buffers):
            for key, old in tensors.items():
                tensors[key] = old.index_select(0, index)
        self.rows, self._free = {name: row for row, name in enumerate(names)}, []

    def _grow(self, rows: int) -> None:
        import torch

        size = self.size
        for tensors in (self.params, self.buffers):
            for key, old in tensors.items():
                tensors[key] = torch.cat([old, old.new_empty((rows, *old.shape[1:]))])
        # Lowest first: rows stay in order of arrival.
        self._free = list(range(size + rows - 1, size - 1, -1)) + self._free

    def run(self, names: list[str], data: list[F32]) -> list[Any]:
        """Each slot's network output (a ModelOutput) for its own vectors, from one call over all of them, padded
        to the most vectors any of them has. `names` in row order: consecutive rows need no copy."""
        import torch

        from ae_monitor.model.networks import ModelOutput

        rows = [self.rows[name] for name in names]
        counts = [len(d) for d in data]
        x = np.zeros((len(data), max(counts), data[0].shape[1]), dtype=np.float32)
        for i, vectors in enumerate(data):
            x[i, : len(vectors)] = vectors
        with torch.inference_mode():
            if rows == list(range(rows[0], rows[0] + len(rows))):
                params = {k: v[rows[0] : rows[0] + len(rows)] for k, v in self.params.items()}
                buffers = {k: v[rows[0] : rows[0] + len(rows)] for k, v in self.buffers.items()}
            else:
                index = torch.tensor(rows)
                params = {k: v.index_select(0, index) for k, v in self.params.items()}
                buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
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
        changed: dict[GroupKey, dict[str, Slot]] = {}
        for name in data:
            key = self._key(name, slots[name], changed)
            if key is not None:
                by_key.setdefault(key, []).append(name)
        for key, new in changed.items():  # new or replaced slots: their weights into their rows, once per batch
            if key not in self._stacks:
                self._stacks[key] = _Stack(next(iter(new.values())).bundle.network)
            self._stacks[key].put(new)
        scores: dict[str, VectorScores] = {}
        for key, names in by_key.items():
            if len(names) < 2:
                continue
            stack = self._stacks[key]
            for call in _calls(names, {name: len(data[name]) for name in names}, stack.rows, self.max_rows):
                outputs = stack.run(call, [data[name] for name in call])
                for name, output in zip(call, outputs, strict=True):
                    scores[name] = slots[name].scorer.score_output(data[name], output)
        return scores

    @property
    def rows_held(self) -> int:
        """Rows of stacked weights held over every architecture, used or free (each a copy of one model's weights)."""
        return sum(stack.size for stack in self._stacks.values())

    def forget(self, name: str) -> None:
        """Slot `name` is gone: its row is freed."""
        member = self._members.pop(name, None)
        if member is not None and member.key is not None:
            self._stacks[member.key].remove(name)

    def _key(self, name: str, slot: Slot, changed: dict[GroupKey, dict[str, Slot]]) -> GroupKey | None:
        """Slot `name`'s group; a slot new under its name (or replaced) is added to `changed`, by group."""
        member = self._members.get(name)
        if member is not None and member.slot is slot:
            return member.key
        key = group_key(slot)
        if member is not None and member.key != key:
            self.forget(name)
        self._members[name] = _Member(slot, key)
        if key is not None:
            changed.setdefault(key, {})[name] = slot
        return key


def _calls(names: list[str], counts: Mapping[str, int], rows: Mapping[str, int], max_rows: int) -> list[list[str]]:
    """The slots of one group split into calls, each in row order. Most vectors first (then in row order, so that
    slots with as many vectors run from consecutive rows); a slot joins a call while the call's padded rows stay
    within `max_rows` and 1.5 times its real vectors (a slot with hundreds of vectors beside many with one goes
    alone rather than make them all pad to hundreds). A call of one slot is left out: its own scorer runs it."""
    calls: list[list[str]] = []
    call: list[str] = []
    real = 0
    for name in sorted(names, key=lambda n: (-counts[n], rows[n])):
        widest = counts[call[0]] if call else counts[name]
        padded = (len(call) + 1) * widest
        if call and (padded > max_rows or 2 * padded > 3 * (real + counts[name])):
            calls.append(call)
            call, real = [], 0
        call.append(name)
        real += counts[name]
    calls.append(call)
    return [sorted(c, key=rows.__getitem__) for c in calls if len(c) > 1]
