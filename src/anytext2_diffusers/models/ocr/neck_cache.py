"""A bounded per-process memo of a FROZEN recognizer's neck, keyed on the exact network input of a crop.

Why: in training the frozen PP-OCRv3 recognizer reads every glyph line (and, without a trainable font
recognizer, every font-hint crop) of every step, without gradients. A glyph line is a pure function of
(text, font), so on a small data set trained for many epochs the same input recurs and its neck need
not be computed again.

Why the key is the prepared input (the crop after rotation, resize to 48 px, normalisation and padding
to the fixed canvas) and not the raw crop: in eval mode the recognizer maps each row of its input batch
on its own (BatchNorm uses running statistics, attention is within a line), so the neck is a function
of that row alone; two crops that prepare to the same row share it. Batching only changes the float
rounding (measured on the converted PP-OCRv3: a crop read alone vs in a batch of 6 differs by at most
1.4e-5 on necks up to 18.6, docs/demo_model.md).

The memo is bypassed (counted) for a recognizer with trainable parameters, and emptied when the
recognizer's weights change (another module, a ``.to()``, an in-place update such as ``load_state_dict``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch

from .preprocess import recognize_crops, resize_norm_crop, rotate_if_vertical, sort_order


def input_key(pixels: torch.Tensor) -> bytes:
    """A 128-bit digest of one prepared recognizer input: its dtype, shape and bytes."""
    cpu = pixels.detach().to("cpu").contiguous()  # a no-op for a contiguous CPU row
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{cpu.dtype}{tuple(cpu.shape)}".encode())
    h.update(cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
    return h.digest()


def _weights_fingerprint(model: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced, moved, cast or updated in place (``_version``)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return (id(model),) + tuple((t.data_ptr(), t._version, t.dtype, str(t.device)) for t in tensors)


class FrozenNeckCache:
    """LRU memo: prepared crop -> neck (T, C) of a frozen recognizer in eval mode, at most ``max_entries``.

    ``necks(recognizer, crops)`` returns what ``recognize_crops(recognizer, crops).neck`` returns (up to
    batching's float rounding). Entries are kept on the CPU in the recognizer's dtype (10 KiB each for
    PP-OCRv3 in fp32). Counters: ``hits``, ``misses``, ``evictions``, ``bypassed`` (crops of a trainable
    recognizer, computed live), ``resets`` (weight changes that emptied the memo).
    """

    def __init__(self, max_entries: int):
        if int(max_entries) < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._fingerprint: tuple | None = None
        self.hits = self.misses = self.evictions = self.bypassed = self.resets = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        seen = self.hits + self.misses
        return dict(
            entries=len(self),
            hits=self.hits,
            misses=self.misses,
            hit_rate=self.hits / seen if seen else 0.0,
            evictions=self.evictions,
            bypassed=self.bypassed,
            resets=self.resets,
        )

    def _check_weights(self, recognizer: torch.nn.Module) -> None:
        fingerprint = _weights_fingerprint(recognizer)
        if fingerprint != self._fingerprint:
            if self._entries:
                self.resets += 1
            self._entries.clear()
            self._fingerprint = fingerprint

    def necks(self, recognizer: torch.nn.Module, crops: Sequence[torch.Tensor], batch_size: int = 6) -> torch.Tensor:
        """(N, T, C) necks of ``crops`` (CHW, 0..255, on the recognizer's device and dtype), in their order.
        The caller puts the recognizer in eval mode and disables gradients (``_run_frozen`` does)."""
        if any(p.requires_grad for p in recognizer.parameters()):
            self.bypassed += len(crops)
            return recognize_crops(recognizer, crops, batch_size=batch_size).neck
        if len(crops) == 0:
            raise ValueError("no crops to recognise")
        self._check_weights(recognizer)
        height, width = recognizer.config.image_height, recognizer.config.image_width
        pixels = torch.stack([resize_norm_crop(rotate_if_vertical(c), height, width, width / height) for c in crops])
        keys = [input_key(p) for p in pixels.detach().to("cpu")]  # one device-to-host copy for all keys
        found: dict[bytes, torch.Tensor] = {}
        todo: list[int] = []  # first crop of each key not in the memo, processed in recognize_crops' order
        pending: set[bytes] = set()
        for i in sort_order(crops).tolist():
            key = keys[i]
            if key in found or key in pending:
                continue
            if key in self._entries:
                self._entries.move_to_end(key)
                found[key] = self._entries[key]
            else:
                todo.append(i)
                pending.add(key)
        self.hits += len(crops) - len(todo)
        self.misses += len(todo)
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            neck = recognizer(pixels[rows]).neck
            for i, row in zip(rows, neck):
                found[keys[i]] = row.detach().to("cpu", copy=True)
                self._store(keys[i], found[keys[i]])
        return torch.stack([found[k] for k in keys]).to(pixels.device)

    def _store(self, key: bytes, neck: torch.Tensor) -> None:
        self._entries[key] = neck
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
