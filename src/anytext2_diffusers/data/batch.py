"""The one training batch: what the data pipeline hands to the training step.

Masks are binary everywhere in AnyText2, so they travel bit-packed (8 pixels per byte) from the
DataLoader workers to the GPU and are unpacked on access; images stay uint8. A 512 px sample is about
1 MiB instead of the reference's ~54 MiB of float64 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
import torch

PACKED_FIELDS = ("glyphs", "font_hint", "inv_mask", "position", "glyph_line")
UNSPECIFIED_COLOR = 500  # the reference's "no colour given" value, per RGB channel


def pack_bits(arr: np.ndarray) -> torch.Tensor:
    """bool (..., W) -> uint8 (..., W/8), most significant bit first (numpy.packbits order)."""
    assert arr.shape[-1] % 8 == 0, "mask width must be a multiple of 8"
    return torch.from_numpy(np.packbits(arr, axis=-1))


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (..., W/8) -> bool (..., W), on the tensor's device."""
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2).bool()


@dataclass
class Batch:
    """A collated batch (B samples, L = max_lines line slots, H = W = resolution, gH = H * glyph_scale).

    Stored tensors:
      image          uint8 (B,3,H,W) RGB 0..255
      edit_mode      bool  (B,)  text-editing sample (masked image shows the image outside the lines)
      n_lines        int64 (B,)  real lines (>= 1: images without text get the reference's placeholder)
      line_valid     bool  (B,L) slot i < n_lines
      color          int16 (B,L,3) RGB 0..255, 500 = unspecified (also for padded slots)
      image_caption, text_caption  list[str] (B)
      text, language list[list[str]] (B x L), padded slots are ' ' as in the reference
      packed         dict of bit-packed masks (see the properties)
      faults         list[tuple[str, ...]] record faults neutralised while rendering each sample
      index          int64 (B,) dataset index of each sample (after substitution of unreadable images)
    Unpacked views (bool, unpacked on first access on the tensors' device and kept on this instance):
      glyphs (B,1,gH,gW), font_hint (B,1,H,W), inv_mask (B,1,H,W), position (B,L,1,H,W),
      glyph_line (B,L,1,80,512), masked_image uint8 (B,3,H,W).
    """

    image: torch.Tensor
    edit_mode: torch.Tensor
    n_lines: torch.Tensor
    line_valid: torch.Tensor
    color: torch.Tensor
    image_caption: list
    text_caption: list
    text: list
    language: list
    packed: dict
    faults: list = field(default_factory=list)
    index: torch.Tensor | None = None

    # --- unpacked masks (computed once per Batch instance; ``to``/``pin_memory`` make new instances) --
    @cached_property
    def glyphs(self) -> torch.Tensor:
        return unpack_bits(self.packed["glyphs"])

    @cached_property
    def font_hint(self) -> torch.Tensor:
        return unpack_bits(self.packed["font_hint"])

    @cached_property
    def inv_mask(self) -> torch.Tensor:
        return unpack_bits(self.packed["inv_mask"])

    @cached_property
    def position(self) -> torch.Tensor:
        return unpack_bits(self.packed["position"])

    @cached_property
    def glyph_line(self) -> torch.Tensor:
        return unpack_bits(self.packed["glyph_line"])

    @property
    def edit_mask(self) -> torch.Tensor:
        """(B,1,H,W) bool: pixels hidden in the masked image (union of positions, edit samples only)."""
        union = self.position.any(dim=1)
        return union & self.edit_mode.view(-1, 1, 1, 1)

    @property
    def masked_image(self) -> torch.Tensor:
        """uint8 (B,3,H,W): image with the edit mask set to 0; all 0 in generation mode.

        0 maps to exactly -1 in [-1, 1], so this equals the reference's
        ``(img - 10*mask).clip(-1, 1)`` (edit) and its all -1 image (generation) bit for bit.
        """
        keep = self.edit_mode.view(-1, 1, 1, 1) & ~self.edit_mask
        return self.image * keep.to(self.image.dtype)

    # --- float tensors for the model -----------------------------------------------------------
    @staticmethod
    def to_unit_range(x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """uint8 0..255 -> [-1, 1] exactly as the reference (x / 127.5 - 1)."""
        return x.to(dtype) / 127.5 - 1.0

    def image_float(self, dtype=torch.float32) -> torch.Tensor:
        return self.to_unit_range(self.image, dtype)

    def masked_image_float(self, dtype=torch.float32) -> torch.Tensor:
        return self.to_unit_range(self.masked_image, dtype)

    # --- movement ------------------------------------------------------------------------------
    def _map(self, fn) -> Batch:
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = fn(v)
            elif f.name == "packed":
                v = {k: fn(t) for k, t in v.items()}
            kw[f.name] = v
        return Batch(**kw)

    def to(self, device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.image.shape[0]

    def nbytes(self) -> int:
        """Bytes of tensor data (what crosses process boundaries and the host-device link)."""
        n = 0
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                n += v.numel() * v.element_size()
        n += sum(t.numel() * t.element_size() for t in self.packed.values())
        return n
