"""The trainable parameter set, for every switch combination, equals what the reference trains.

The reference's rule is written out below in ITS terms (ldm key names, ``ControlLDM.configure_optimizers``
plus the ``no_grad`` regions of ``ControlledUnetModel.forward`` / ``get_input``) and compared, through the
project's exact diffusers<->ldm key mapping, with ``select_trainable`` on our tiny components.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from anytext2_diffusers.conversion.to_original import diffusers_to_original_mapping
from anytext2_diffusers.models import AnyText2AttnXModel, AnyText2ControlNetModel
from anytext2_diffusers.models.ocr import PPOCRRecognizer
from anytext2_diffusers.models.text_embedding import AnyText2TextEmbeddingModel
from anytext2_diffusers.testing import tiny_components
from anytext2_diffusers.training.config import TrainingConfig
from anytext2_diffusers.training.trainable import apply_trainable, describe, select_trainable

U, C, E = "model.diffusion_model.", "control_model.", "embedding_manager."

# The tiny reference model (same shapes as anytext2_diffusers.testing), yaml structure of anytext2_sd15.yaml.
_NET = dict(
    in_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 1, 2, 2],
    num_heads=2,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=32,
    legacy=False,
)
ORIGINAL = {
    "model": {
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "scale_factor": 0.18215,
            "control_stage_config": {
                "params": dict(_NET, glyph_channels=1, position_channels=1, glyph_scale=1, fast_control=True)
            },
            "unet_config": {"params": dict(_NET, out_channels=4)},
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 1, 2, 2],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                }
            },
        }
    }
}
# (input_attnx, mid_attnx, output_attnx_level): the yaml default, no mid-block AttnX, AttnX everywhere.
PLACEMENTS = {"default": (False, True, [2, 1]), "no_mid": (False, False, [2, 1]), "everywhere": (True, True, [2, 1, 0])}


def reference_trained(ldm_keys: set[str], em_keys: set[str], sw, input_attnx: bool, mid_attnx: bool) -> set[str]:
    """What the reference's optimizer updates (ldm names)."""
    unet = {k for k in ldm_keys if k.startswith(U)}
    # ControlLDM.configure_optimizers
    opt = {k for k in ldm_keys if k.startswith(C)}
    opt |= em_keys  # embedding_manager.embedding_parameters() == all its parameters
    opt |= {k for k in unet if "attn1x" in k or "attn2x" in k}
    if not sw.sd_locked:
        opt |= {k for k in unet if k.startswith((U + "output_blocks.", U + "out."))}
    if sw.unlock_qkv:
        opt |= {k for k in unet if "attn2.to_k" in k or "attn2.to_v" in k or "attn2.to_q" in k}
    # ...minus what never receives a gradient there:
    never = set()
    if not input_attnx:  # ControlledUnetModel.forward: time_embed + input_blocks under torch.no_grad()
        never |= {k for k in unet if k.startswith((U + "input_blocks.", U + "time_embed."))}
    if not mid_attnx:  # middle_block under torch.no_grad()
        never |= {k for k in unet if k.startswith(U + "middle_block.")}
    if not sw.train_text_embedding:  # cond_stage_trainable False: conditioning computed in get_input (no_grad)
        never |= em_keys
    never |= {k for k in em_keys if k.startswith(E + "font_predictor.head.")}  # only the neck is used
    return opt - never


@pytest.fixture(scope="module")
def base():
    parts = tiny_components(seed=0)
    recognizer = PPOCRRecognizer(backbone_scale=0.25, image_width=160, neck_hidden_dims=32, neck_dims=32)
    return parts, recognizer


def build(base, placement: str, train_font_ocr: bool):
    parts, recognizer = base
    input_attnx, mid_attnx, levels = PLACEMENTS[placement]
    original = copy.deepcopy(ORIGINAL)
    unet_params = original["model"]["params"]["unet_config"]["params"]
    unet_params.update(input_attnx=input_attnx, mid_attnx=mid_attnx, output_attnx=True, output_attnx_level=levels)
    mapping = diffusers_to_original_mapping(original)
    unet = copy.deepcopy(parts["unet"])
    attnx = AnyText2AttnXModel.from_unet(
        unet,
        in_mid_block=mid_attnx,
        in_up_blocks=tuple(sorted(3 - level for level in levels)),
        in_down_blocks=(0, 1, 2) if input_attnx else (),
    )
    components = dict(
        unet=unet,
        attnx=attnx,
        controlnet=AnyText2ControlNetModel.from_unet(unet),
        text_embedding=AnyText2TextEmbeddingModel.from_text_encoder(
            parts["text_encoder"],
            font_recognizer=recognizer,
            style_ocr_trainable=train_font_ocr,
            neck_length=20,
            neck_dim=32,
        ),
    )
    return components, mapping, attnx.config


def to_ldm(groups, mapping) -> set[str]:
    names = set()
    for component, params in groups.items():
        for name, _ in params:
            names.add(E + name if component == "text_embedding" else mapping[component][name][0])
    return names


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
@pytest.mark.parametrize("train_font_ocr", [True, False])
def test_trainable_set_equals_the_reference(base, placement, train_font_ocr):
    components, mapping, attnx_config = build(base, placement, train_font_ocr)
    input_attnx, mid_attnx, _ = PLACEMENTS[placement]
    ldm_keys = {ldm for part in ("unet", "attnx", "controlnet") for ldm, _ in mapping[part].values()}
    em_keys = {E + k for k, _ in components["text_embedding"].named_parameters()}
    assert ("font_predictor" in {k.split(".")[1] for k in em_keys}) == train_font_ocr
    checked = 0
    for sd_locked, unlock_qkv, train_text_embedding in itertools.product([True, False], repeat=3):
        sw = TrainingConfig(
            sd_locked=sd_locked,
            unlock_qkv=unlock_qkv,
            train_text_embedding=train_text_embedding,
            train_font_ocr=train_font_ocr,
            attnx_mid_block=attnx_config.in_mid_block,
            attnx_down_blocks=list(attnx_config.in_down_blocks),
        )
        ours = to_ldm(select_trainable(components, sw), mapping)
        expected = reference_trained(ldm_keys, em_keys, sw, input_attnx, mid_attnx)
        assert ours == expected, (
            f"{sw}: only ours {sorted(ours - expected)[:5]}, only reference {sorted(expected - ours)[:5]}"
        )
        checked += 1
    assert checked == 8


def test_apply_trainable_sets_requires_grad_and_counts(base):
    components, _, _ = build(base, "default", True)
    sw = TrainingConfig(
        sd_locked=False,
        unlock_qkv=True,
        train_text_embedding=True,
        train_font_ocr=True,
        attnx_mid_block=True,
        attnx_down_blocks=[],
    )
    groups = apply_trainable(components, sw)
    chosen = {id(p) for params in groups.values() for _, p in params}
    for model in components.values():
        for p in model.parameters():
            assert p.requires_grad == (id(p) in chosen)
    unet = {n for n, _ in groups["unet"]}
    assert all(n.startswith(("up_blocks.", "conv_norm_out.", "conv_out.", "mid_block.")) for n in unet)
    assert any(".attn2.to_q." in n for n in unet if n.startswith("mid_block."))
    assert not any(n.startswith("down_blocks.") for n in unet)
    text = describe(groups, components)
    assert "controlnet" in text and "total" in text
    assert isinstance(next(components["unet"].parameters()), torch.nn.Parameter)
