"""AnyText2 text-to-image generation and text editing as a diffusers pipeline.

Flow of one call (reference ``ms_wrapper.py`` + ``cldm.apply_model``):

1. inputs -> lines (text, position blob, polygon, font, colour) -> rendered conditions in a ``Batch``;
2. image caption (+ added prompt) -> CLIP in 75-token chunks -> UNet/AttnX context;
   text caption with ``*`` per line -> CLIP with the line embeddings substituted -> WriteNet context;
   the unconditional branch uses the negative prompt and an empty text caption;
3. masked image -> VAE -> masked latent (all black in generate mode, the image outside the lines in edit mode);
4. WriteNet once per branch (fast control: its residuals do not depend on the noisy latent or t);
5. the scheduler loop with classifier-free guidance; 6. VAE decode.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..data.batch import Batch
from ..models.attnx import AnyText2AttnXModel
from ..models.conditioning import AnyText2CaptionEncoder
from ..models.writenet import AnyText2ControlNetModel
from . import inputs as I
from .community import write_community_pipeline

logger = logging.getLogger(__name__)

# Reference defaults (ms_wrapper.py / demo.py): the added prompt is appended to the image caption of the
# conditional branch, the negative prompt is the unconditional image caption.
DEFAULT_ADDED_PROMPT = (
    "best quality, extremely detailed,4k, HD, supper legible text,  clear text edges,  clear strokes, neat writing,"
    " no watermarks"
)
DEFAULT_NEGATIVE_PROMPT = (
    "low-res, bad anatomy, extra digit, fewer digits, cropped, worst quality, low quality, watermark, unreadable"
    " text, messy words, distorted text, disorganized writing, advertising picture"
)


@dataclass
class AnyText2PipelineOutput(BaseOutput):
    """``images``: PIL list, numpy (N,H,W,3) in [0,1], a tensor, or latents (``output_type``)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class _Residuals:
    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor


class AnyText2Pipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    r"""AnyText2 (arXiv 2411.15245): write given text lines at given positions, with per-line font and colour.

    Components: ``vae``, ``text_encoder`` + ``tokenizer`` (CLIP, both captions), ``unet`` (stock SD1.5 UNet;
    ``attnx`` is hooked into it while it belongs to the pipeline), ``controlnet`` (WriteNet),
    ``text_embedding`` (per-line token embeddings), ``ocr`` (the frozen PP-OCR glyph recognizer), ``scheduler``.
    """

    model_cpu_offload_seq = "text_encoder->ocr->text_embedding->controlnet->unet->vae"
    # AttnX runs inside the UNet's forward through hooks; an offload hook on its own forward would never fire.
    _exclude_from_cpu_offload = ["attnx"]
    _optional_components = ["text_embedding", "ocr"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: AnyText2ControlNetModel,
        attnx: AnyText2AttnXModel,
        scheduler: KarrasDiffusionSchedulers,
        text_embedding=None,
        ocr=None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            attnx=attnx,
            scheduler=scheduler,
            text_embedding=text_embedding,
            ocr=ocr,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        # Benchmarks and the equality test switch this on to run WriteNet at every step (same math).
        self.recompute_writenet_every_step = False
        self._warned_no_text_embedding = False
        self.attach_attnx()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' ``save_pretrained`` plus ``pipeline.py``, so that ``DiffusionPipeline.from_pretrained(folder,
        custom_pipeline="pipeline", trust_remote_code=True)`` loads the folder too (training, conversion and
        users all save through here)."""
        os.makedirs(save_directory, exist_ok=True)
        write_community_pipeline(save_directory)  # first, so that push_to_hub=True uploads it too
        super().save_pretrained(save_directory, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # AttnX
    # ------------------------------------------------------------------------------------------------
    def swap_unet(self, unet: UNet2DConditionModel) -> None:
        """Use another SD1.5-architecture UNet (e.g. a community fine-tune) as the base model while keeping
        WriteNet, AttnX and the text embedding; AttnX moves its hooks to the new UNet."""
        if self.unet is not None and tuple(unet.config.block_out_channels) != tuple(
            self.unet.config.block_out_channels
        ):
            raise ValueError("the new UNet must have the same architecture (block_out_channels) as the current one")
        self.register_modules(unet=unet)
        self.attach_attnx()

    def attach_attnx(self) -> None:
        """Hook ``attnx`` into ``unet`` (idempotent). The UNet's modules and state dict stay stock."""
        if self.attnx is None or self.unet is None:
            return
        if self.attnx.attached_unet is self.unet:
            return
        if self.attnx.is_attached:
            self.attnx.detach()
        self.attnx.attach(self.unet)

    # ------------------------------------------------------------------------------------------------
    # encoding
    # ------------------------------------------------------------------------------------------------
    def encode_prompt(self, image_captions, text_captions=None, line_embeds=None, n_lines=None):
        """(image context (B, 77*k, D) for UNet/AttnX, text context (B, 77, D) or None for WriteNet).

        ``*`` placeholders take the line embeddings in order (``AnyText2CaptionEncoder``); image captions are
        encoded in 75-token chunks, so they may be of any length.
        """
        encoder = AnyText2CaptionEncoder(self.tokenizer, self.text_encoder, placeholder=I.PLACEHOLDER, freeze=False)
        out = encoder(
            list(image_captions), None if text_captions is None else list(text_captions), line_embeds, n_lines
        )
        return out.image_context, out.text_context

    def encode_lines(self, batch: Batch, font_hint_crops=None):
        """(line_embeds (N, D), n_lines (B,)) from ``text_embedding`` with the ``ocr`` glyph recognizer;
        (None, None) for a pipeline without a text embedding (placeholders keep their CLIP token)."""
        if self.text_embedding is None:
            if not self._warned_no_text_embedding:
                logger.warning("AnyText2Pipeline has no text_embedding: '*' placeholders keep their CLIP embedding")
                self._warned_no_text_embedding = True
            return None, None
        if self.ocr is None:
            raise ValueError("the text embedding needs the glyph recognizer: the pipeline's `ocr` component is None")
        device = self.text_embedding.device
        crops = None
        if font_hint_crops is not None:  # bool stroke masks -> (3, h, w) 0..255, the text embedding's crop format
            crops = [
                [
                    None if c is None else torch.from_numpy(c).to(device, torch.float32).mul(255).expand(3, -1, -1)
                    for c in row
                ]
                for row in font_hint_crops
            ]
        with warnings.catch_warnings():
            if all(not t.strip() for row in batch.text for t in row):
                # no text at all: the reference's single empty line crops its fallback box, by design
                warnings.filterwarnings("ignore", message="empty position mask")
            out = self.text_embedding(
                glyph_line=batch.glyph_line.to(device),
                position=batch.position.to(device),
                font_hint=batch.font_hint.to(device),
                color=batch.color.to(device, torch.float32),
                n_lines=batch.n_lines,
                glyph_recognizer=self.ocr,
                font_crops=crops,
            )
        return out.line_embeds, out.n_lines

    def encode_vae(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> scaled latents. The posterior's mean: the reference draws a sample, whose spread is
        negligible for SD's VAE; the mean keeps conditions independent of the generator and of batching."""
        dist = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mode() * self.vae.config.scaling_factor

    # ------------------------------------------------------------------------------------------------
    # WriteNet
    # ------------------------------------------------------------------------------------------------
    def run_writenet(self, latents, t, context, glyphs, positions, masked_latents, scale) -> _Residuals:
        down, mid = self.controlnet(
            latents,
            t,
            encoder_hidden_states=context,
            glyphs=glyphs,
            positions=positions,
            masked_latents=masked_latents,
            conditioning_scale=scale,
            return_dict=False,
        )
        return _Residuals(tuple(down), mid)

    # ------------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------------
    def prepare_conditions(
        self,
        prompt: str | list[str],
        texts: list[str] | None = None,
        positions=None,
        mode: str = "generate",
        image=None,
        text_prompt: str | None = None,
        fonts: list | None = None,
        colors: list | None = None,
        height: int | None = None,
        width: int | None = None,
        sort_priority: str = "vertical",
        max_chars: int = I.MAX_CHARS,
    ) -> tuple[Batch, list | None]:
        """Check the user inputs and render them into a ``Batch`` (one row per prompt) plus per-line
        font-hint crops (None where the line has none). See ``__call__`` for the arguments."""
        if mode not in ("generate", "edit"):
            raise ValueError(f"mode must be 'generate' or 'edit', got {mode!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")

        # texts: explicit, else quoted in the text prompt, else quoted in the prompt (AnyText style)
        if text_prompt is not None:
            text_caption, quoted = I.parse_quoted_texts(text_prompt)
            if texts is None:
                texts = quoted
            elif quoted:
                raise ValueError("give the lines either in `texts` or quoted in `text_prompt`, not both")
        else:
            parsed = [I.parse_quoted_texts(p) for p in prompts]
            if texts is None and any(q for _, q in parsed):
                if len({tuple(q) for _, q in parsed}) > 1:
                    raise ValueError("prompts of one call must quote the same lines (they share the positions)")
                prompts = [p for p, _ in parsed]
                texts = parsed[0][1]
            texts = list(texts or [])
            text_caption = I.default_text_caption(len(texts)) if texts else ""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings, one per line")
        if texts and positions is None:
            raise ValueError("positions are needed to write texts: a mask image, a list of masks or polygons")

        # size and image
        edit_image = None
        if mode == "edit":
            if image is None:
                raise ValueError("mode='edit' needs `image` (the image to edit)")
            arr = I.to_uint8_hwc(image)
            src_hw = arr.shape[:2]
            H, W = I.edit_size(*src_hw)
            if H < I.SIZE_MULTIPLE or W < I.SIZE_MULTIPLE:
                raise ValueError(f"image of {src_hw[0]}x{src_hw[1]} is too small: both sides must be >= 64")
            if max(src_hw) > I.EDIT_MAX_LENGTH:  # two steps as the reference: cap the long side, then crop to 64
                s = I.EDIT_MAX_LENGTH / max(src_hw)
                arr = cv2_resize(arr, int(round(src_hw[0] * s)), int(round(src_hw[1] * s)))
            edit_image = cv2_resize(arr, H, W).clip(1, 255)  # reference: clip(1, 255) "for mask reason"
            if height is not None or width is not None:
                logger.warning("height/width are ignored in edit mode: the size follows the image (%dx%d)", H, W)
            masks = (
                I.positions_to_masks(positions, src_hw, sort_priority)
                if _sized_like(positions, src_hw)
                else I.positions_to_masks(positions, (H, W), sort_priority)
            )
            masks = [I._resize_mask(m, (H, W)) for m in masks]
        else:
            if image is not None:
                logger.warning("`image` is ignored in generate mode")
            H, W = height, width
            if H is None or W is None:
                hw = _mask_size(positions)
                H, W = H or (hw[0] if hw else 512), W or (hw[1] if hw else 512)
            if H % I.SIZE_MULTIPLE or W % I.SIZE_MULTIPLE or H <= 0 or W <= 0:
                raise ValueError(f"height and width must be positive multiples of 64, got {H}x{W}")
            masks = I.positions_to_masks(positions, (H, W), sort_priority)
        if positions is not None and not masks:
            raise ValueError("positions is empty: no blob of at least 20 white pixels was found")

        lines, extra = I.make_lines(texts, masks, fonts, colors, max_chars)
        batch = I.build_batch(
            prompts, text_caption, lines, extra, (H, W), edit_image, self.controlnet.config.glyph_scale
        )
        crops = [ln.font_hint_crop for ln in lines]
        return batch, (None if all(c is None for c in crops) else [crops] * len(prompts))

    # ------------------------------------------------------------------------------------------------
    # call
    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        texts: list[str] | None = None,
        positions=None,
        mode: str = "generate",
        image=None,
        text_prompt: str | None = None,
        fonts: list | None = None,
        colors: list | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        added_prompt: str | None = DEFAULT_ADDED_PROMPT,
        strength: float | list[float] = 1.0,
        attnx_scale: float = 1.0,
        eta: float = 0.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        keep_unmasked_area: bool = False,
        sort_priority: str = "vertical",
        max_chars: int = I.MAX_CHARS,
    ):
        r"""Generate (or edit) images with ``texts`` written at ``positions``.

        Args:
            prompt: image caption(s); lines in double quotes are taken as ``texts`` when neither ``texts`` nor
                ``text_prompt`` is given.
            texts: one string per line (cut to ``max_chars`` with a warning).
            positions: a mask image (white blobs on black, one blob per line), a list of per-line masks, or a
                list of (N, 2) polygons (x, y pixels). Blobs pair with ``texts`` in reading order: rows of 102 px
                from top to bottom, left to right within a row (``sort_priority="horizontal"``: columns first).
            mode: ``"generate"`` or ``"edit"`` (needs ``image``; the size follows the image: long side capped at
                1024, sides cut down to multiples of 64; the masked image keeps everything outside the lines).
            text_prompt: the text caption with lines in quotes (AnyText2's "Text Prompt"); default
                ``'Text says * , * . '`` with one ``*`` per line.
            fonts: per line, a font file (the line is rendered with it into the font hint), an image crop of
                text in the wanted font (its strokes are the hint), or None (no font condition).
            colors: per line, RGB 0..255 or ``'#rrggbb'``, or None (unspecified).
            guidance_scale: CFG scale; reference eval 7.5 (the default), ms_wrapper 9.
            negative_prompt / added_prompt: the reference demo's defaults; the added prompt is appended to the
                image caption as ``f"{prompt}, {added_prompt}"``.
            strength: WriteNet conditioning scale (reference ``strength`` = ``control_scales``), one value or 13.
            attnx_scale: scale of the AttnX layers.
            keep_unmasked_area: edit mode only; ``True`` re-imposes the noised original latents outside the
                lines after every step (as diffusers' inpainting does), so pixels there survive up to the VAE
                round trip. ``False`` (default) is the reference, which relies on the masked-latent condition.
        """
        batch, crops = self.prepare_conditions(
            prompt, texts, positions, mode, image, text_prompt, fonts, colors, height, width, sort_priority, max_chars
        )
        return self.generate_from_batch(
            batch,
            font_hint_crops=crops,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            added_prompt=added_prompt,
            strength=strength,
            attnx_scale=attnx_scale,
            eta=eta,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            keep_unmasked_area=keep_unmasked_area,
        )

    @torch.no_grad()
    def generate_from_batch(
        self,
        batch: Batch,
        font_hint_crops: list | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        added_prompt: str | None = DEFAULT_ADDED_PROMPT,
        strength: float | list[float] = 1.0,
        attnx_scale: float = 1.0,
        eta: float = 0.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        keep_unmasked_area: bool = False,
    ):
        """Sample from already-rendered conditions (the data module's ``Batch``: one row per image caption,
        e.g. validation samples of the training set). Arguments as ``__call__``."""
        # 1. check
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        bad = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")
        if num_inference_steps < 1 or num_images_per_prompt < 1:
            raise ValueError("num_inference_steps and num_images_per_prompt must be >= 1")
        B, n = len(batch), num_images_per_prompt
        H, W = batch.image.shape[-2:]
        if H % I.SIZE_MULTIPLE or W % I.SIZE_MULTIPLE:
            raise ValueError(f"image size must be a multiple of 64, got {H}x{W}")
        if isinstance(generator, list) and len(generator) != B * n:
            raise ValueError(f"got {len(generator)} generators for {B * n} images")
        if isinstance(negative_prompt, list) and len(negative_prompt) != B:
            raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {B} prompts")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        self._guidance_scale, self._num_timesteps, self._interrupt = guidance_scale, num_inference_steps, False

        # 2. encode captions and lines (reference: cond = caption + ", " + added prompt and the text caption;
        #    uncond = negative prompt and an empty text caption, same glyphs/positions)
        captions = [f"{c}, {added_prompt}" if added_prompt else c for c in batch.image_caption]
        line_embeds, n_lines = self.encode_lines(batch, font_hint_crops)
        image_ctx, text_ctx = self.encode_prompt(captions, batch.text_caption, line_embeds, n_lines)
        if do_cfg:
            neg = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * B
            uncond_image_ctx, uncond_text_ctx = self.encode_prompt(neg, [""] * B)

        # 3. rendered conditions -> tensors; masked latents
        dtype = self.unet.dtype
        rep = lambda x: x.repeat_interleave(n, dim=0)  # noqa: E731 - one row per generated image
        glyphs = rep(batch.glyphs.to(device, dtype))
        # per-line masks; WriteNet sums them as the reference does (overlapping lines count twice)
        positions = rep(batch.position[:, :, 0].to(device, dtype))
        masked_latents = rep(self.encode_vae(batch.masked_image_float().to(device)).to(dtype))
        image_ctx, text_ctx = rep(image_ctx), rep(text_ctx)
        if do_cfg:
            uncond_image_ctx, uncond_text_ctx = rep(uncond_image_ctx), rep(uncond_text_ctx)

        # 4. timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (B * n, self.unet.config.in_channels, H // self.vae_scale_factor, W // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)

        keep = bool(keep_unmasked_area) and bool(batch.edit_mode.any())
        if keep:  # latent-resolution mask: a latent pixel is regenerated if any of its 8x8 pixels is a line
            edit = batch.edit_mask.float().to(device)
            edit_mask = rep(F.max_pool2d(edit, self.vae_scale_factor)).to(dtype)
            edit_mask = torch.where(rep(batch.edit_mode.to(device)).view(-1, 1, 1, 1), edit_mask, 1.0)
            image_latents = rep(self.encode_vae(batch.image_float().to(device)).to(dtype))
            keep_noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)

        # 5. WriteNet: with fast control its residuals depend on the text conditions only -> once per branch
        fast = self.controlnet.config.fast_control and not self.recompute_writenet_every_step
        scale = strength

        def writenet(sample, t):
            cond = self.run_writenet(sample, t, text_ctx, glyphs, positions, masked_latents, scale)
            uncond = (
                self.run_writenet(sample, t, uncond_text_ctx, glyphs, positions, masked_latents, scale)
                if do_cfg
                else None
            )
            return cond, uncond

        # cond and uncond share one UNet pass when their contexts have the same length (the image caption is
        # chunked, so a long prompt can have more chunks than the negative prompt: then two passes, as the
        # reference always does)
        batched = do_cfg and uncond_image_ctx.shape[1] == image_ctx.shape[1]
        if batched:
            both_ctx = torch.cat([uncond_image_ctx, image_ctx])

        def residuals(sample, t):
            cond, uncond = writenet(sample, t)
            if not batched:
                return cond, uncond
            both = _Residuals(
                tuple(torch.cat([u, c]) for u, c in zip(uncond.down, cond.down)), torch.cat([uncond.mid, cond.mid])
            )
            return both, None

        if fast:
            res, res_uncond = residuals(latents, timesteps[0])

        # 6. denoise
        unet_kwargs = {"cross_attention_kwargs": {"attnx_scale": float(attnx_scale)}}
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    continue
                if not fast:
                    res, res_uncond = residuals(latents, t)
                latent_in = self.scheduler.scale_model_input(latents, t)
                if batched:
                    noise_uncond, noise_pred = self._unet(
                        torch.cat([latent_in] * 2), t, both_ctx, res, unet_kwargs
                    ).chunk(2)
                else:
                    noise_pred = self._unet(latent_in, t, image_ctx, res, unet_kwargs)
                    if do_cfg:
                        noise_uncond = self._unet(latent_in, t, uncond_image_ctx, res_uncond, unet_kwargs)
                if do_cfg:
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if keep:
                    known = image_latents
                    if i + 1 < len(timesteps):
                        known = self.scheduler.add_noise(image_latents, keep_noise, timesteps[i + 1 : i + 2])
                    latents = edit_mask * latents + (1 - edit_mask) * known
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = out.pop("latents", latents)
                progress_bar.update()

        # 7. decode
        if output_type == "latent":
            images = latents
        else:
            images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return AnyText2PipelineOutput(images=images)

    # ------------------------------------------------------------------------------------------------
    def _unet(self, latent_in, t, context, res: _Residuals, kwargs) -> torch.Tensor:
        """One UNet pass; the cached residuals are never modified (diffusers adds them out of place)."""
        return self.unet(
            latent_in,
            t,
            encoder_hidden_states=context,
            down_block_additional_residuals=res.down,
            mid_block_additional_residual=res.mid,
            return_dict=False,
            **kwargs,
        )[0]

    def _extra_step_kwargs(self, generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps


def cv2_resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return arr if arr.shape[:2] == (h, w) else cv2.resize(arr, (w, h))


def _mask_size(positions) -> tuple[int, int] | None:
    """(H, W) of a mask image or the first mask of a list, None for polygons / nothing."""
    if positions is None:
        return None
    first = positions[0] if isinstance(positions, (list, tuple)) and positions else positions
    if isinstance(first, PIL.Image.Image):
        return first.size[1], first.size[0]
    arr = np.squeeze(np.asarray(first.detach().cpu() if isinstance(first, torch.Tensor) else first))
    if arr.ndim == 2 and arr.shape[1] == 2:
        return None  # a polygon
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        return arr.shape[1], arr.shape[2]
    return (arr.shape[0], arr.shape[1]) if arr.ndim >= 2 else None


def _sized_like(positions, hw) -> bool:
    """True when ``positions`` (mask image or masks) has the size ``hw`` or consists of polygons."""
    size = _mask_size(positions)
    return size is None or size == tuple(hw)
