"""PP-OCRv3 text-line recognizer (the network AnyText2 uses for its OCR embedding and OCR losses).

MobileNetV1Enhance backbone -> SVTR sequence-encoder neck -> linear CTC head. Module and parameter
names follow the reference ``RecModel`` (``backbone.*``, ``neck.encoder.*``, ``head.fc.*``) so that
AnyText2's ``text_predictor.*`` / ``embedding_manager.font_predictor.*`` / ``ppv3_rec.pth`` weights load
after stripping their prefix.

The forward pass returns raw CTC logits (no softmax) in both train and eval mode, as the reference
PyTorch port does; PaddlePaddle/ONNX exports of the same network end with a softmax instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class PPOCRRecognizerOutput(BaseOutput):
    """``logits``: (N, T, num_classes) CTC scores before softmax; ``neck``: (N, T, neck_dims) features
    that feed the head (AnyText2's ``ctc_neck``: glyph/style embeddings and the OCR perceptual loss)."""

    logits: torch.Tensor
    neck: torch.Tensor


def _hard_swish(x: torch.Tensor) -> torch.Tensor:
    # Written out (not F.hardswish) to keep the reference's exact arithmetic and gradient.
    return x * F.relu6(x + 3.0) / 6.0


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class _BackboneConvBN(nn.Module):
    """Bias-free conv + BatchNorm + optional hard-swish (reference attribute names ``_conv``/``_batch_norm``)."""

    def __init__(self, in_ch, out_ch, kernel, stride, padding, groups=1, act=True):
        super().__init__()
        self._conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self._batch_norm = nn.BatchNorm2d(out_ch)
        self.act = act

    def forward(self, x):
        x = self._batch_norm(self._conv(x))
        return _hard_swish(x) if self.act else x


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        w = F.adaptive_avg_pool2d(x, 1)
        w = _hard_sigmoid(self.conv2(F.relu(self.conv1(w))))
        return x * w


class _DepthwiseSeparable(nn.Module):
    def __init__(self, in_ch, mid_ch, out_ch, stride, kernel=3, use_se=False):
        super().__init__()
        self._depthwise_conv = _BackboneConvBN(in_ch, mid_ch, kernel, stride, kernel // 2, groups=in_ch)
        if use_se:
            self._se = _SqueezeExcite(mid_ch)
        self.use_se = use_se
        self._pointwise_conv = _BackboneConvBN(mid_ch, out_ch, 1, 1, 0)

    def forward(self, x):
        x = self._depthwise_conv(x)
        if self.use_se:
            x = self._se(x)
        return self._pointwise_conv(x)


class MobileNetV1Enhance(nn.Module):
    """PP-OCRv3's backbone: a 48xW line becomes a (C, 1, W/8) map (three (2,1) strides keep width)."""

    # (in, mid, out, stride, kernel, se) at scale 1.0; the channel widths are multiplied by ``scale``.
    PLAN = (
        [
            (32, 32, 64, 1, 3, False),
            (64, 64, 128, 1, 3, False),
            (128, 128, 128, 1, 3, False),
            (128, 128, 256, (2, 1), 3, False),
            (256, 256, 256, 1, 3, False),
            (256, 256, 512, (2, 1), 3, False),
        ]
        + [(512, 512, 512, 1, 5, False)] * 5
        + [(512, 512, 1024, (2, 1), 5, True)]
    )

    def __init__(self, in_channels=3, scale=0.5, last_conv_stride=(1, 2), last_pool_type="avg"):
        super().__init__()

        def s(c):
            return int(c * scale)

        self.conv1 = _BackboneConvBN(in_channels, s(32), 3, 2, 1)
        blocks = [_DepthwiseSeparable(s(i), s(m), s(o), st, k, se) for i, m, o, st, k, se in self.PLAN]
        blocks.append(_DepthwiseSeparable(s(1024), s(1024), s(1024), tuple(last_conv_stride), 5, True))
        self.block_list = nn.Sequential(*blocks)
        if last_pool_type == "avg":
            self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        elif last_pool_type == "max":
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        else:
            raise ValueError(f"last_pool_type must be 'avg' or 'max', got {last_pool_type!r}")
        self.out_channels = s(1024)

    def forward(self, x):
        return self.pool(self.block_list(self.conv1(x)))


class _NeckConvBN(nn.Module):
    """Bias-free conv + BatchNorm + swish (reference attribute names ``conv``/``norm``)."""

    def __init__(self, in_ch, out_ch, kernel, padding):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.silu(self.norm(self.conv(x)))


class _SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, attn_drop):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class _SVTRBlock(nn.Module):
    """Post-residual LayerNorm-first transformer block (reference ``Block`` with ``prenorm=False``)."""

    def __init__(self, dim, num_heads, mlp_ratio, drop, attn_drop):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.mixer = _SelfAttention(dim, num_heads, attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = x + self.drop(self.mixer(self.norm1(x)))
        h = self.drop(F.silu(self.mlp.fc1(self.norm2(x))))
        return x + self.drop(self.mlp.fc2(h))


class _SVTREncoder(nn.Module):
    def __init__(self, in_channels, dims, depth, hidden_dims, num_heads, mlp_ratio, drop, attn_drop):
        super().__init__()
        self.conv1 = _NeckConvBN(in_channels, in_channels // 8, 3, 1)
        self.conv2 = _NeckConvBN(in_channels // 8, hidden_dims, 1, 0)
        self.svtr_block = nn.ModuleList(
            [_SVTRBlock(hidden_dims, num_heads, mlp_ratio, drop, attn_drop) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(hidden_dims, eps=1e-6)
        self.conv3 = _NeckConvBN(hidden_dims, in_channels, 1, 0)
        self.conv4 = _NeckConvBN(2 * in_channels, in_channels // 8, 3, 1)
        self.conv1x1 = _NeckConvBN(in_channels // 8, dims, 1, 0)

    def forward(self, x):
        # The reference's ``use_guide`` sets Paddle's ``stop_gradient`` on a torch tensor, which is a no-op:
        # gradients do flow into the backbone here, and AnyText2's OCR losses rely on that.
        z = self.conv2(self.conv1(x))
        b, c, h, w = z.shape
        z = z.flatten(2).transpose(1, 2)
        for blk in self.svtr_block:
            z = blk(z)
        z = self.norm(z)
        z = z.reshape(b, h, w, c).permute(0, 3, 1, 2)
        z = torch.cat((x, self.conv3(z)), dim=1)
        return self.conv1x1(self.conv4(z))


class _SequenceNeck(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.encoder = _SVTREncoder(**kwargs)

    def forward(self, x):
        x = self.encoder(x)
        b, c, h, w = x.shape
        return x.reshape(b, c, h * w).transpose(1, 2)


class _CTCHead(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        return self.fc(x)


class PPOCRRecognizer(ModelMixin, ConfigMixin):
    """PP-OCRv3 recognizer: (N, 3, 48, W) images in [-1, 1] -> ``logits`` (N, W/8, classes), ``neck``.

    ``characters`` is the full class table (``['sos'] + dictionary + [' ']`` for AnyText2: blank = 0,
    unknown characters map to the last entry). It travels in the config so a saved recognizer can
    decode and build CTC targets on its own.
    """

    _supports_gradient_checkpointing = False  # train-mode BatchNorm would update its stats twice

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        backbone_scale: float = 0.5,
        last_conv_stride: Sequence[int] = (1, 2),
        last_pool_type: str = "avg",
        neck_dims: int = 64,
        neck_depth: int = 2,
        neck_hidden_dims: int = 120,
        neck_num_heads: int = 8,
        neck_mlp_ratio: float = 2.0,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.1,
        num_classes: int = 6625,
        image_height: int = 48,
        image_width: int = 320,
        characters: list[str] | None = None,
    ):
        super().__init__()
        if characters is not None and len(characters) != num_classes:
            raise ValueError(
                f"characters has {len(characters)} entries but num_classes is {num_classes} "
                "(AnyText2 expects ['sos'] + dictionary + [' '])"
            )
        self.backbone = MobileNetV1Enhance(in_channels, backbone_scale, last_conv_stride, last_pool_type)
        self.neck = _SequenceNeck(
            in_channels=self.backbone.out_channels,
            dims=neck_dims,
            depth=neck_depth,
            hidden_dims=neck_hidden_dims,
            num_heads=neck_num_heads,
            mlp_ratio=neck_mlp_ratio,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
        )
        self.head = _CTCHead(neck_dims, num_classes)
        self._char_to_id = None

    @property
    def characters(self) -> list[str]:
        if self.config.characters is None:
            raise ValueError(
                "this recognizer has no character table (config.characters is None); build it with "
                "anytext2_diffusers.models.ocr.load_character_list() or convert the ONNX weights"
            )
        return list(self.config.characters)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True):
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(
                f"pixel_values must be (N, {self.config.in_channels}, H, W), got {tuple(pixel_values.shape)}"
            )
        neck = self.neck(self.backbone(pixel_values))
        logits = self.head(neck)
        if not return_dict:
            return logits, neck
        return PPOCRRecognizerOutput(logits=logits, neck=neck)

    @torch.no_grad()
    def read(self, crops, batch_size: int = 32, dynamic_width: bool = False) -> list[str]:
        """Read text lines: PIL images or HxWx3 (or HxW) uint8 arrays / CHW float tensors in 0..255.

        Preprocessed exactly as AnyText2 does (fixed 48x320 canvas; ``dynamic_width=True`` widens the
        canvas to the widest line as PaddleOCR does, which helps long lines), greedy CTC decoding.
        """
        from .decoding import ctc_greedy_decode
        from .preprocess import recognize_crops, to_chw_tensor

        if len(crops) == 0:
            return []
        param = next(self.parameters())
        tensors = [to_chw_tensor(c).to(device=param.device, dtype=param.dtype) for c in crops]
        was_training = self.training
        self.eval()
        try:
            out = recognize_crops(self, tensors, batch_size=batch_size, dynamic_width=dynamic_width)
        finally:
            self.train(was_training)
        return ctc_greedy_decode(out.logits, self.characters)
