"""WriteNet: AnyText2's ControlNet, built from diffusers' own UNet blocks.

The hint is not an image but three conditions fused into one feature map at latent size: the union
of the rendered glyphs, the sum of the line position masks and the masked-image latent. With
``fast_control`` (AnyText2's default) the encoder sees zeros and timestep 0 instead of the noisy
latent, so the residuals depend on the text conditions only and can be computed once per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class AnyText2ControlNetOutput(BaseOutput):
    """Residuals to pass to ``UNet2DConditionModel`` as ``down_block_additional_residuals`` and
    ``mid_block_additional_residual``."""

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _conv_stack(in_channels: int, plan: list[tuple[int, int]]) -> nn.Sequential:
    """3x3 convs each followed by SiLU; ``plan`` lists (out_channels, stride). Layer indices match the
    reference's ``TimestepEmbedSequential`` so converted keys keep their numbers."""
    layers: list[nn.Module] = []
    channels = in_channels
    for out_channels, stride in plan:
        layers += [nn.Conv2d(channels, out_channels, 3, padding=1, stride=stride), nn.SiLU()]
        channels = out_channels
    return nn.Sequential(*layers)


# (out_channels, stride) of the reference's glyph encoders; glyph_scale 2 renders glyphs at twice the
# image size, so its encoder has one more stride-2 stage. Both end at 256 channels, latent size.
GLYPH_PLANS = {
    1: [(16, 1), (16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2)],
    2: [(8, 1), (8, 1), (16, 2), (16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2)],
}
POSITION_PLAN = [(8, 1), (8, 1), (16, 2), (16, 1), (32, 2), (32, 1), (64, 2)]
GLYPH_FEATURES, POSITION_FEATURES = 256, 64


class AnyText2ControlNetModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """AnyText2's WriteNet (reference: ``cldm.cldm.ControlNet``) as a diffusers model.

    Key names follow diffusers' ``ControlNetModel`` (``conv_in``, ``down_blocks``, ``mid_block``,
    ``controlnet_down_blocks``, ``controlnet_mid_block``) plus ``glyph_block``, ``position_block`` and
    ``fuse_block`` for AnyText2's hint encoder. ``PeftAdapterMixin``: LoRA adapters through diffusers' own
    ``add_adapter`` / ``save_lora_adapter`` / ``load_lora_adapter`` / ``fuse_lora`` (docs/lora.md).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        glyph_channels: int = 1,
        position_channels: int = 1,
        masked_latent_channels: int = 4,
        glyph_scale: int = 1,
        fast_control: bool = True,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
    ):
        super().__init__()
        if glyph_scale not in GLYPH_PLANS:
            raise ValueError(f"glyph_scale must be one of {sorted(GLYPH_PLANS)}, got {glyph_scale}")
        if len(block_out_channels) != len(down_block_types):
            raise ValueError("block_out_channels and down_block_types must have the same length")
        # diffusers' SD1.5 naming: `attention_head_dim` holds the number of heads.
        num_heads = attention_head_dim
        if isinstance(num_heads, int):
            num_heads = (num_heads,) * len(down_block_types)

        self.glyph_block = _conv_stack(glyph_channels, GLYPH_PLANS[glyph_scale])
        self.position_block = _conv_stack(position_channels, POSITION_PLAN)
        self.fuse_block = zero_module(
            nn.Conv2d(GLYPH_FEATURES + POSITION_FEATURES + masked_latent_channels, block_out_channels[0], 3, padding=1)
        )

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList(
            [zero_module(nn.Conv2d(block_out_channels[0], block_out_channels[0], 1))]
        )
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            input_channel = output_channel
            output_channel = block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            self.down_blocks.append(
                get_down_block(
                    down_block_type,
                    num_layers=layers_per_block,
                    transformer_layers_per_block=transformer_layers_per_block,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final_block,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_attention_dim,
                    num_attention_heads=num_heads[i],
                    attention_head_dim=output_channel // num_heads[i],
                    downsample_padding=downsample_padding,
                    use_linear_projection=use_linear_projection,
                    upcast_attention=upcast_attention,
                )
            )
            for _ in range(layers_per_block + (0 if is_final_block else 1)):
                self.controlnet_down_blocks.append(zero_module(nn.Conv2d(output_channel, output_channel, 1)))

        mid_channels = block_out_channels[-1]
        self.controlnet_mid_block = zero_module(nn.Conv2d(mid_channels, mid_channels, 1))
        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=mid_channels,
            temb_channels=time_embed_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor,
            resnet_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_heads[-1],
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )

    @property
    def num_residuals(self) -> int:
        return len(self.controlnet_down_blocks) + 1

    @classmethod
    def from_unet(
        cls,
        unet,
        glyph_scale: int = 1,
        fast_control: bool = True,
        load_weights_from_unet: bool = True,
    ) -> AnyText2ControlNetModel:
        """Build WriteNet for ``unet`` as AnyText2's ``tool_add_anytext.py`` does: ``conv_in``, the time
        embedding, the down blocks and the mid block are copies of the UNet's; the zero convs and the
        fuse conv start at zero; the glyph and position encoders keep their random initialisation."""
        cfg = unet.config
        model = cls(
            in_channels=cfg.in_channels,
            masked_latent_channels=cfg.out_channels,  # the VAE's latent channels (4 for SD1.5)
            glyph_scale=glyph_scale,
            fast_control=fast_control,
            down_block_types=tuple(cfg.down_block_types),
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            downsample_padding=cfg.downsample_padding,
            mid_block_scale_factor=cfg.mid_block_scale_factor,
            act_fn=cfg.act_fn,
            norm_num_groups=cfg.norm_num_groups,
            norm_eps=cfg.norm_eps,
            cross_attention_dim=cfg.cross_attention_dim,
            transformer_layers_per_block=cfg.transformer_layers_per_block,
            attention_head_dim=cfg.attention_head_dim,
            use_linear_projection=cfg.use_linear_projection,
            upcast_attention=cfg.upcast_attention,
            flip_sin_to_cos=cfg.flip_sin_to_cos,
            freq_shift=cfg.freq_shift,
        )
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
                getattr(model, name).load_state_dict(getattr(unet, name).state_dict())
        return model if model.dtype == unet.dtype else model.to(dtype=unet.dtype)

    def encode_hint(self, glyphs: torch.Tensor, positions: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
        """Fuse glyphs, positions and the masked latent into the feature map added after ``conv_in``.

        ``glyphs`` (B, C, gH, gW) is binarised over its channels (any non-zero pixel is ink), so per-line
        glyph maps or their union give the same result; ``positions`` (B, L, H, W) is summed over lines.
        """
        dtype = self.fuse_block.weight.dtype
        glyphs = (glyphs.sum(dim=1, keepdim=True) != 0).to(dtype)
        positions = positions.to(dtype).sum(dim=1, keepdim=True)
        features = torch.cat(
            [self.glyph_block(glyphs), self.position_block(positions), masked_latents.to(dtype)], dim=1
        )
        return self.fuse_block(features)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        glyphs: torch.Tensor,
        positions: torch.Tensor,
        masked_latents: torch.Tensor,
        conditioning_scale: float | list[float] = 1.0,
        return_dict: bool = True,
    ) -> AnyText2ControlNetOutput | tuple:
        batch = sample.shape[0]
        dtype = self.conv_in.weight.dtype
        if self.config.fast_control:
            timesteps = torch.zeros(batch, dtype=torch.long, device=sample.device)
            hidden = torch.zeros_like(sample, dtype=dtype)
        else:
            timesteps = torch.as_tensor(timestep, device=sample.device)
            if timesteps.ndim == 0:
                timesteps = timesteps[None]
            timesteps = timesteps.expand(batch)
            hidden = sample.to(dtype)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype))

        hidden = self.conv_in(hidden) + self.encode_hint(glyphs, positions, masked_latents)
        residuals = [hidden]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            residuals.extend(res)
        hidden = self.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)

        scales = conditioning_scale
        if isinstance(scales, (int, float)):
            scales = [float(scales)] * self.num_residuals
        if len(scales) != self.num_residuals:
            raise ValueError(f"conditioning_scale needs {self.num_residuals} values, got {len(scales)}")
        down = tuple(conv(r) * s for conv, r, s in zip(self.controlnet_down_blocks, residuals, scales))
        mid = self.controlnet_mid_block(hidden) * scales[-1]
        if not return_dict:
            return down, mid
        return AnyText2ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
