"""AttnX: AnyText2's extra self- and cross-attention layers, kept outside the stock UNet.

In each chosen transformer block the reference computes (norms shared with the block, ``s`` the
AttnX scale, ``ctx`` the image-caption context)::

    h = h + attn1(norm1(h));  h = h + attn2(norm2(h), ctx)
    h = h + s * attn1x(norm1(h));  h = h + s * attn2x(norm2(h), ctx)
    h = h + ff(norm3(h))

``attach(unet)`` adds the two AttnX terms with PyTorch hooks on the block's ``norm2`` (records the
block state before cross-attention) and ``attn2`` (adds the AttnX terms to its output, which the block
then adds to the residual stream). The UNet's modules, state dict and class stay stock, so
``unet.save_pretrained`` writes exactly SD1.5 keys and ``detach`` restores the original behaviour.

Placement: AnyText2 names output levels from the bottom (``output_attnx_level=[2, 1]``); diffusers
counts ``up_blocks`` from the bottom too but starting at the lowest resolution, so output level ``l``
is ``up_blocks[num_levels - 1 - l]``: the reference default is the mid block + ``up_blocks`` 1 and 2.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AttnXLayer(nn.Module):
    """The two extra attentions of one transformer block."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, upcast_attention: bool = False):
        super().__init__()
        head_dim = dim // heads
        self.attn1x = Attention(
            query_dim=dim, heads=heads, dim_head=head_dim, bias=False, upcast_attention=upcast_attention, out_bias=True
        )
        self.attn2x = Attention(
            query_dim=dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=head_dim,
            bias=False,
            upcast_attention=upcast_attention,
            out_bias=True,
        )


def _block_layout(
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    mid_block: bool,
    up_blocks: tuple[int, ...],
    down_blocks: tuple[int, ...],
    transformer_layers_per_block: int,
) -> list[tuple[str, int]]:
    """(UNet module path of a BasicTransformerBlock, channels) for every block that gets AttnX."""
    n = len(block_out_channels)
    layout = []
    for i in down_blocks:
        for a in range(layers_per_block):
            for t in range(transformer_layers_per_block):
                layout.append((f"down_blocks.{i}.attentions.{a}.transformer_blocks.{t}", block_out_channels[i]))
    if mid_block:
        for t in range(transformer_layers_per_block):
            layout.append((f"mid_block.attentions.0.transformer_blocks.{t}", block_out_channels[-1]))
    for i in up_blocks:
        for a in range(layers_per_block + 1):
            for t in range(transformer_layers_per_block):
                layout.append((f"up_blocks.{i}.attentions.{a}.transformer_blocks.{t}", block_out_channels[n - 1 - i]))
    return layout


def _nested_set(root: nn.Module, path: str, module: nn.Module) -> None:
    """Place ``module`` at dotted ``path`` under ``root``, creating ModuleDicts on the way, so AttnX
    keys read like the UNet's (``mid_block.attentions.0.transformer_blocks.0.attn1x.to_q.weight``)."""
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        if part not in node._modules:
            node.add_module(part, nn.ModuleDict())
        node = node._modules[part]
    node.add_module(parts[-1], module)


def _plain_forward(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``norm.forward`` (its hooks skipped) on ``h`` in the norm's own dtype: a frozen half-precision UNet
    meets float32 AttnX outputs here, and CPU norms refuse mixed dtypes outside autocast."""
    weight = getattr(norm, "weight", None)
    if weight is not None and h.is_floating_point() and h.dtype != weight.dtype:
        h = h.to(weight.dtype)
    return norm.forward(h)


class AnyText2AttnXModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """AnyText2's AttnX layers for a ``UNet2DConditionModel``; attach/detach, save and load on their own.
    LoRA adapters through diffusers' ``PeftAdapterMixin``, as on the UNet (docs/lora.md)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_head_dim: int | tuple[int, ...] = 8,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int = 1,
        in_mid_block: bool = True,
        in_up_blocks: tuple[int, ...] = (1, 2),
        in_down_blocks: tuple[int, ...] = (),
        upcast_attention: bool = False,
        scale: float = 1.0,
    ):
        super().__init__()
        n = len(block_out_channels)
        heads = attention_head_dim if not isinstance(attention_head_dim, int) else (attention_head_dim,) * n
        self.layout = _block_layout(
            tuple(block_out_channels),
            layers_per_block,
            in_mid_block,
            tuple(in_up_blocks),
            tuple(in_down_blocks),
            transformer_layers_per_block,
        )
        for path, channels in self.layout:
            level = block_out_channels.index(channels)
            _nested_set(self, path, AttnXLayer(channels, heads[level], cross_attention_dim, upcast_attention))
        self.scale = scale
        self._handles: list = []
        self._attached_ref = None  # weakref: the UNet must not become a submodule of AttnX
        self._call_scale: float | None = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_unet(
        cls,
        unet,
        in_mid_block: bool = True,
        in_up_blocks: tuple[int, ...] = (1, 2),
        in_down_blocks: tuple[int, ...] = (),
        scale: float = 1.0,
        load_weights_from_unet: bool = True,
    ) -> AnyText2AttnXModel:
        """AttnX for ``unet``; as in AnyText2's ``tool_add_anytext.py``, ``attn1x``/``attn2x`` start as
        copies of the block's ``attn1``/``attn2``."""
        cfg = unet.config
        model = cls(
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            attention_head_dim=cfg.attention_head_dim,
            cross_attention_dim=cfg.cross_attention_dim,
            transformer_layers_per_block=cfg.transformer_layers_per_block,
            in_mid_block=in_mid_block,
            in_up_blocks=tuple(in_up_blocks),
            in_down_blocks=tuple(in_down_blocks),
            upcast_attention=cfg.upcast_attention,
            scale=scale,
        )
        if load_weights_from_unet:
            for path, layer in model.layers():
                block = unet.get_submodule(path)
                layer.attn1x.load_state_dict(block.attn1.state_dict())
                layer.attn2x.load_state_dict(block.attn2.state_dict())
        return model if model.dtype == unet.dtype else model.to(dtype=unet.dtype)

    def layers(self) -> Iterator[tuple[str, AttnXLayer]]:
        for path, _ in self.layout:
            yield path, self.get_submodule(path)

    # -- attach / detach ------------------------------------------------------------------------------
    @property
    def attached_unet(self):
        return self._attached_ref() if self._attached_ref is not None else None

    @property
    def is_attached(self) -> bool:
        return self.attached_unet is not None

    def attach(self, unet) -> AnyText2AttnXModel:
        """Hook the AttnX layers into ``unet``'s transformer blocks (no module or key of the UNet changes).

        ``unet(..., cross_attention_kwargs={"attnx_scale": s})`` overrides ``self.scale`` for one call.
        """
        if self.is_attached:
            raise RuntimeError("AttnX is already attached; call detach() first")
        self._handles.append(unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True))
        for path, layer in self.layers():
            try:
                block = unet.get_submodule(path)
            except AttributeError as err:
                raise ValueError(
                    f"UNet has no transformer block {path!r}: AttnX config does not fit this UNet"
                ) from err
            if getattr(block, "norm_type", "layer_norm") != "layer_norm" or block.attn2 is None:
                raise ValueError(f"{path}: AttnX needs a layer-norm block with cross-attention")
            state: dict = {}
            self._handles.append(block.norm2.register_forward_pre_hook(self._make_norm2_hook(state)))
            self._handles.append(
                block.attn2.register_forward_hook(self._make_attn2_hook(block, layer, state), with_kwargs=True)
            )
        self._attached_ref = weakref.ref(unet)
        return self

    def detach(self, unet=None) -> AnyText2AttnXModel:
        """Remove every hook; the UNet is then exactly the stock model again."""
        if unet is not None and self.is_attached and unet is not self.attached_unet:
            raise ValueError("AttnX is attached to another UNet")
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._attached_ref = None
        return self

    # -- hooks ----------------------------------------------------------------------------------------
    def _unet_pre_hook(self, module, args, kwargs):
        cak = kwargs.get("cross_attention_kwargs")
        if cak and "attnx_scale" in cak:
            cak = dict(cak)
            self._call_scale = float(cak.pop("attnx_scale"))
            kwargs = dict(kwargs, cross_attention_kwargs=cak or None)
            return args, kwargs
        # Kept until the next UNet call so that gradient-checkpoint recomputation sees the same scale.
        self._call_scale = None
        return None

    @property
    def active_scale(self) -> float:
        return self.scale if self._call_scale is None else self._call_scale

    @staticmethod
    def _make_norm2_hook(state: dict):
        def hook(module, args):
            state["hidden"] = args[0]

        return hook

    def _make_attn2_hook(self, block: nn.Module, layer: AttnXLayer, state: dict):
        def hook(module, args, kwargs, output):
            scale = self.active_scale
            hidden = state.pop("hidden", None)
            if scale == 0 or hidden is None:
                return output
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            mask = kwargs.get("attention_mask")
            # `.forward` on the norms skips their hooks (ours records only the block's own norm2 call).
            h = hidden + output
            extra1 = scale * layer.attn1x(_plain_forward(block.norm1, h))
            h = h + extra1
            extra2 = scale * layer.attn2x(
                _plain_forward(block.norm2, h), encoder_hidden_states=context, attention_mask=mask
            )
            return output + extra1 + extra2

        return hook
