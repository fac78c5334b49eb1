"""AnyText2's text embedding module (the reference's ``EmbeddingManager``) as a diffusers model.

Every text line becomes one token embedding, the sum of up to four parts:

* glyph: the rendered line (80x512) read by the FROZEN glyph recognizer (PP-OCRv3, the pipeline's
  ``ocr`` component, passed in at call time), its neck (40, 64) -> zero-init Linear -> LayerNorm (``proj``);
* position: a small conv net over the line's position mask (``position_encoder``);
* font: the font hint cropped by the line's position mask, read by a TRAINABLE recognizer copy
  (``font_predictor``), neck -> zero-init Linear -> LayerNorm (``style_proj``);
* color: the line's RGB in 0..255 (500 = unspecified) -> zero-init Linear -> LayerNorm (``color_proj``).

Submodule names equal the reference's, so an original checkpoint converts by stripping
``embedding_manager.``. The line tokens replace the caption's placeholders in
:mod:`anytext2_diffusers.models.conditioning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from .ocr import PPOCRRecognizer, crop_line_by_mask, recognize_crops
from .ocr.neck_cache import FrozenNeckCache


@dataclass
class AnyText2TextEmbeddingOutput(BaseOutput):
    """Per valid line, sample-major (s0l0, s0l1, s1l0, ...); ``N = sum(n_lines)``.

    Args:
        line_embeds: (N, token_dim) the line tokens = sum of the enabled parts.
        n_lines: (B,) int64, lines per sample (to split ``line_embeds`` per sample).
        glyph_embeds, position_embeds, font_embeds, color_embeds: (N, token_dim) parts (``None`` when
            the branch is disabled); font/color parts are already zeroed where ``enable_flag`` says so.
        glyph_neck: (N, 40, 64) glyph recognizer neck; font_neck: (N, 40, 64) font recognizer neck.
        font_crops: the (3, h, w) 0..255 font-hint crops fed to the font recognizer.
    """

    line_embeds: torch.Tensor
    n_lines: torch.Tensor
    glyph_embeds: torch.Tensor
    position_embeds: torch.Tensor | None = None
    font_embeds: torch.Tensor | None = None
    color_embeds: torch.Tensor | None = None
    glyph_neck: torch.Tensor | None = None
    font_neck: torch.Tensor | None = None
    font_crops: list[torch.Tensor] | None = None


class PositionEncoder(nn.Module):
    """Position mask (N, C, H, W) -> (N, out_channels): a 3x3 conv, ``num_downsamples`` stride-2 convs
    doubling the width, a 3x3 conv, SiLU after each, global average pool (reference ``EncodeNet``)."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 16, num_downsamples: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        widths = [base_channels * 2**i for i in range(num_downsamples + 1)]
        self.conv_list = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1, stride=2) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.conv2 = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        for conv in self.conv_list:
            x = self.act(conv(x))
        x = self.act(self.conv2(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _zero_linear_norm(in_features: int, token_dim: int) -> nn.Sequential:
    """Linear (zero-initialised, so a fresh branch adds nothing) followed by LayerNorm: keys ``0.*``, ``1.*``."""
    linear = nn.Linear(in_features, token_dim)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(linear, nn.LayerNorm(token_dim))


def split_lines(line_embeds: torch.Tensor, n_lines) -> list[torch.Tensor]:
    """(N, D) sample-major line tokens -> one (n_lines[b], D) tensor per sample."""
    counts = [int(n) for n in n_lines]
    if sum(counts) != line_embeds.shape[0]:
        raise ValueError(f"n_lines {counts} sums to {sum(counts)} but there are {line_embeds.shape[0]} line embeddings")
    return list(torch.split(line_embeds, counts, dim=0))


def _unit_range(name: str, x: torch.Tensor) -> torch.Tensor:
    """bool / integer 0-1 / float 0..1 -> float32; uint8 images in 0..255 are a likely mistake, so refuse them."""
    x = x.float()
    if x.numel() and (x.max() > 1.0 + 1e-6 or x.min() < -1e-6):
        raise ValueError(
            f"{name} must hold values in 0..1 (bool or float), got range [{x.min().item():g}, {x.max().item():g}]; "
            "divide 0..255 images by 255"
        )
    return x


def _lines_5d(name: str, x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, L, H, W) or (B, L, C, H, W) -> (B, L, C, H, W)."""
    if x.ndim == 4:
        x = x.unsqueeze(2)
    if x.ndim != 5 or x.shape[0] != batch:
        raise ValueError(f"{name} must be (B={batch}, L, C, H, W) or (B, L, H, W), got shape {tuple(x.shape)}")
    return x


class AnyText2TextEmbeddingModel(ModelMixin, ConfigMixin):
    r"""Glyph/position/font/color line tokens for AnyText2's text caption.

    The frozen glyph recognizer is NOT part of this model: it is the pipeline's ``ocr`` component (also
    used by the OCR losses) and is passed to :meth:`forward` as ``glyph_recognizer``, so it is saved
    once, moves with its own ``.to()``, and never receives gradients from here. The trainable font
    recognizer copy ``font_predictor`` is a submodule and is saved with this model.

    Args:
        token_dim: width of a line token = the text encoder's hidden size (768 for SD1.5; the reference
            hard-codes 768).
        neck_length, neck_dim: shape of the PP-OCRv3 neck (40 time steps x 64 for a 48x320 input).
        add_pos: add the position-mask embedding (``position_encoder``).
        position_channels: channels of the position mask.
        add_style_ocr: add the font embedding read by a recognizer from the font hint (``style_proj``).
        style_ocr_trainable: the font branch uses its own trainable recognizer copy ``font_predictor``
            (reference default); if False it uses the frozen glyph recognizer instead.
        font_recognizer_config: ``PPOCRRecognizer`` kwargs of ``font_predictor`` (default: PP-OCRv3 ch).
        font_ocr_train_mode: if True (reference behaviour), ``font_predictor`` follows this model's
            train/eval mode, so in training its BatchNorm uses batch statistics (per recognizer batch of
            ``ocr_batch_size`` crops) and its SVTR dropout is active. If False it is kept in eval mode.
        add_color: add the colour embedding (``color_proj``).
        enable_flag: if True, zero the font part of lines whose font-hint crop is empty and the colour
            part of lines without a colour (mean RGB outside 0..255, e.g. 500). The reference config
            uses False: such lines still feed empty crops / 500s through the branches.
        ocr_batch_size: recognizer batch size (the reference's ``rec_batch_num``, 6); matters only for
            a recognizer in train mode.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        token_dim: int = 768,
        neck_length: int = 40,
        neck_dim: int = 64,
        add_pos: bool = True,
        position_channels: int = 1,
        add_style_ocr: bool = True,
        style_ocr_trainable: bool = True,
        font_recognizer_config: dict[str, Any] | None = None,
        font_ocr_train_mode: bool = True,
        add_color: bool = True,
        enable_flag: bool = False,
        ocr_batch_size: int = 6,
    ):
        super().__init__()
        features = neck_length * neck_dim
        self.proj = _zero_linear_norm(features, token_dim)
        self.position_encoder = PositionEncoder(position_channels, token_dim) if add_pos else None
        self.font_predictor = None
        self.style_proj = None
        if add_style_ocr:
            if style_ocr_trainable:
                self.font_predictor = PPOCRRecognizer(**(font_recognizer_config or {}))
                if self.font_predictor.config.neck_dims != neck_dim:
                    raise ValueError(
                        f"font recognizer neck width {self.font_predictor.config.neck_dims} != neck_dim {neck_dim}"
                    )
                # Only the neck is used: the CTC head would get no gradient (and trip DDP's unused-parameter check).
                self.font_predictor.head.requires_grad_(False)
            self.style_proj = _zero_linear_norm(features, token_dim)
        self.color_proj = _zero_linear_norm(3, token_dim) if add_color else None

    @classmethod
    def from_text_encoder(cls, text_encoder, font_recognizer: PPOCRRecognizer | None = None, **kwargs):
        """A fresh model whose token width matches ``text_encoder``; ``font_predictor`` starts as a copy
        of ``font_recognizer`` (the reference initialises it from the same PP-OCRv3 weights as the
        glyph recognizer). Without ``font_recognizer`` it is randomly initialised."""
        if font_recognizer is not None and "font_recognizer_config" not in kwargs:
            kwargs["font_recognizer_config"] = recognizer_config_without_characters(font_recognizer)
        model = cls(token_dim=text_encoder.config.hidden_size, **kwargs)
        if font_recognizer is not None and model.font_predictor is not None:
            model.font_predictor.load_state_dict(font_recognizer.state_dict(), strict=True)
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        if self.font_predictor is not None and not self.config.font_ocr_train_mode:
            self.font_predictor.eval()
        return self

    def _check_neck(self, neck: torch.Tensor, who: str) -> None:
        expected = (self.config.neck_length, self.config.neck_dim)
        if tuple(neck.shape[1:]) != expected:
            raise ValueError(
                f"{who} neck has shape {tuple(neck.shape[1:])} per line, this model expects {expected} "
                "(neck_length = recognizer image_width / 8, neck_dim = its neck_dims)"
            )

    def forward(
        self,
        glyph_line: torch.Tensor,
        position: torch.Tensor | None,
        font_hint: torch.Tensor | None,
        color: torch.Tensor | None,
        n_lines,
        glyph_recognizer: nn.Module | None = None,
        font_crops: Sequence[Sequence[torch.Tensor | None]] | None = None,
        return_dict: bool = True,
        neck_cache: FrozenNeckCache | None = None,
    ):
        r"""Line tokens of every valid line of a batch.

        Args:
            glyph_line: (B, L, 1, 80, 512) rendered lines in 0..1 (white text on black), float or bool.
            position: (B, L, 1, H, W) line masks in 0..1 (needed for ``add_pos`` and ``add_style_ocr``).
            font_hint: (B, 1, H, W) font hint in 0..1 (needed for ``add_style_ocr``).
            color: (B, L, 3) RGB in 0..255, 500 = no colour (needed for ``add_color``).
            n_lines: (B,) valid lines per sample; lines ``>= n_lines[b]`` are padding and ignored.
            glyph_recognizer: the frozen ``PPOCRRecognizer`` (pipeline component ``ocr``). It runs in eval
                mode under ``no_grad`` for this call, whatever its current mode (as in the reference).
            font_crops: optional per-sample, per-line (3, h, w) 0..255 images replacing the font-hint crop
                of that line (``None`` entries keep the crop): the reference's "mimic font" inference input.
            neck_cache: optional memo of the frozen recognizer's necks by exact input (training's
                ``--cache_ocr_necks``); the trainable ``font_predictor`` never goes through it.

        Returns:
            :class:`AnyText2TextEmbeddingOutput` (or a tuple ``(line_embeds, n_lines)``).
        """
        if glyph_recognizer is None:
            raise ValueError(
                "glyph_recognizer is required: pass the frozen PPOCRRecognizer (the pipeline's `ocr` component); "
                "it is deliberately not stored in AnyText2TextEmbeddingModel"
            )
        cfg = self.config
        batch = glyph_line.shape[0]
        glyph_line = _unit_range("glyph_line", _lines_5d("glyph_line", glyph_line, batch))
        max_lines = glyph_line.shape[1]
        counts = torch.as_tensor([int(n) for n in n_lines], dtype=torch.long)
        if counts.shape != (batch,) or (counts < 0).any() or (counts > max_lines).any():
            raise ValueError(f"n_lines must be {batch} integers in 0..{max_lines}, got {counts.tolist()}")
        index = [(b, j) for b in range(batch) for j in range(int(counts[b]))]
        needs_position = cfg.add_pos or cfg.add_style_ocr
        if needs_position:
            if position is None:
                raise ValueError("position is required when add_pos or add_style_ocr is enabled")
            position = _unit_range("position", _lines_5d("position", position, batch))
            if position.shape[1] != max_lines:
                raise ValueError(f"position has {position.shape[1]} lines, glyph_line {max_lines}")
        if cfg.add_style_ocr:
            if font_hint is None:
                raise ValueError("font_hint is required when add_style_ocr is enabled")
            if font_hint.ndim == 3:
                font_hint = font_hint.unsqueeze(1)
            if font_hint.ndim != 4 or font_hint.shape[0] != batch or font_hint.shape[1] not in (1, 3):
                raise ValueError(f"font_hint must be (B={batch}, 1 or 3, H, W), got shape {tuple(font_hint.shape)}")
            font_hint = _unit_range("font_hint", font_hint)
        if cfg.add_color:
            if color is None:
                raise ValueError("color is required when add_color is enabled")
            color = torch.as_tensor(color)
            if color.ndim != 3 or color.shape[:2] != (batch, max_lines) or color.shape[2] != 3:
                raise ValueError(f"color must be (B={batch}, L={max_lines}, 3), got shape {tuple(color.shape)}")

        device, dtype = self.proj[0].weight.device, self.proj[0].weight.dtype
        if not index:
            empty = torch.zeros(0, cfg.token_dim, device=device, dtype=dtype)
            out = AnyText2TextEmbeddingOutput(line_embeds=empty, n_lines=counts, glyph_embeds=empty)
            return out if return_dict else (empty, counts)

        # glyph: frozen recognizer on the rendered lines (x255, 3 channels), always eval, never trained here
        rec_param = next(glyph_recognizer.parameters())
        lines = [(glyph_line[b, j] * 255.0).expand(3, -1, -1) for b, j in index]
        glyph_neck = self._run_frozen(glyph_recognizer, lines, rec_param, neck_cache)
        self._check_neck(glyph_neck, "glyph recognizer")
        glyph_embeds = self.proj(glyph_neck.flatten(1).to(dtype))
        line_embeds = glyph_embeds

        position_embeds = None
        if cfg.add_pos:
            masks = torch.stack([position[b, j] for b, j in index]).to(device=device, dtype=dtype)
            position_embeds = self.position_encoder(masks)
            line_embeds = line_embeds + position_embeds

        font_embeds = font_neck = crops = None
        if cfg.add_style_ocr:
            crops = self._font_crops(font_hint, position, index, font_crops)
            if self.font_predictor is not None:
                param = next(self.font_predictor.parameters())
                crops_in = [c.to(device=param.device, dtype=param.dtype) for c in crops]
                font_neck = recognize_crops(self.font_predictor, crops_in, batch_size=cfg.ocr_batch_size).neck
            else:
                font_neck = self._run_frozen(glyph_recognizer, crops, rec_param, neck_cache)
            self._check_neck(font_neck, "font recognizer")
            font_embeds = self.style_proj(font_neck.flatten(1).to(dtype))
            if cfg.enable_flag:
                has_font = torch.tensor([bool(c.mean() != 0) for c in crops], device=device)
                font_embeds = font_embeds * has_font[:, None].to(dtype)
            line_embeds = line_embeds + font_embeds

        color_embeds = None
        if cfg.add_color:
            rgb = torch.stack([color[b, j] for b, j in index]).to(device=device, dtype=dtype)
            color_embeds = self.color_proj(rgb)
            if cfg.enable_flag:
                mean = rgb.float().mean(dim=1)
                has_color = (mean >= 0) & (mean <= 255)
                color_embeds = color_embeds * has_color[:, None].to(dtype)
            line_embeds = line_embeds + color_embeds

        if not return_dict:
            return line_embeds, counts
        return AnyText2TextEmbeddingOutput(
            line_embeds=line_embeds,
            n_lines=counts,
            glyph_embeds=glyph_embeds,
            position_embeds=position_embeds,
            font_embeds=font_embeds,
            color_embeds=color_embeds,
            glyph_neck=glyph_neck,
            font_neck=font_neck,
            font_crops=crops,
        )

    def _run_frozen(
        self, recognizer: nn.Module, crops: list[torch.Tensor], param: torch.Tensor, cache: FrozenNeckCache | None
    ) -> torch.Tensor:
        """Neck of a frozen recognizer in eval mode (its previous mode is restored), through ``cache`` if given."""
        was_training = recognizer.training
        recognizer.eval()
        try:
            with torch.no_grad():
                crops = [c.to(device=param.device, dtype=param.dtype) for c in crops]
                if cache is not None:
                    return cache.necks(recognizer, crops, batch_size=self.config.ocr_batch_size)
                return recognize_crops(recognizer, crops, batch_size=self.config.ocr_batch_size).neck
        finally:
            recognizer.train(was_training)

    @staticmethod
    def _font_crops(font_hint, position, index, overrides) -> list[torch.Tensor]:
        """(3, h, w) 0..255 crop of the font hint under each line's position mask (min-area rectangle,
        rectified), or the caller's replacement image for that line."""
        crops = []
        # The used lines' masks reach the host in one copy: one device sync per call instead of one per line.
        rows = [i for i, (b, j) in enumerate(index) if not _has_override(overrides, b, j)]
        on_host = (position[[index[i][0] for i in rows], [index[i][1] for i in rows], 0] > 0.5).cpu().numpy()
        host_mask = dict(zip(rows, on_host))
        for i, (b, j) in enumerate(index):
            if i not in host_mask:  # the caller's image for this line
                override = torch.as_tensor(overrides[b][j]).float()
                if override.ndim != 3 or override.shape[0] not in (1, 3):
                    raise ValueError(
                        f"font_crops[{b}][{j}] must be (1 or 3, h, w) in 0..255, got {tuple(override.shape)}"
                    )
                crops.append(override.expand(3, -1, -1))
                continue
            image = (font_hint[b].float() * 255.0).expand(3, -1, -1)
            crops.append(crop_line_by_mask(image, host_mask[i]))
        return crops


def _has_override(overrides, b: int, j: int) -> bool:
    return overrides is not None and b < len(overrides) and j < len(overrides[b]) and overrides[b][j] is not None


def recognizer_config_without_characters(recognizer: PPOCRRecognizer) -> dict[str, Any]:
    """The recognizer's constructor kwargs minus the 6625-entry character table (the font copy never decodes)."""
    config = {k: v for k, v in dict(recognizer.config).items() if not k.startswith("_") and k != "characters"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
