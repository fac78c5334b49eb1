"""AnyText2's dual-caption CLIP conditioning (the reference's ``FrozenCLIPEmbedderT3`` + placeholder hook).

* image caption, any length -> 75-token chunks, each wrapped as ``[bos] chunk [eos]`` (77 tokens), encoded
  separately and concatenated: ``image_context`` (B, 77 * n_chunks, D) for the UNet and AttnX;
* text caption, padded/truncated to 77 tokens; the k-th placeholder token (``*``) of sample b is replaced by
  line token k of sample b (from :class:`~anytext2_diffusers.models.text_embedding.AnyText2TextEmbeddingModel`)
  BEFORE the position embeddings are added: ``text_context`` (B, 77, D) for WriteNet.

Outputs are the final-layer-norm hidden states of a stock ``CLIPTextModel``. The substitution is a forward
hook on the token-embedding layer held only for the duration of one call, so the stock forward (causal
mask, attention implementation, transformers 4 or 5 layout) runs unchanged and no class is patched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class CaptionEncoding:
    """``image_context`` (B, 77 * n_chunks, D), ``image_input_ids`` (B, 77 * n_chunks);
    ``text_context`` (B, 77, D) and ``text_input_ids`` (B, 77), both ``None`` without text captions."""

    image_context: torch.Tensor
    image_input_ids: torch.Tensor
    text_context: torch.Tensor | None = None
    text_input_ids: torch.Tensor | None = None


def placeholder_token_id(tokenizer, placeholder: str = "*") -> int:
    """The single token id of ``placeholder``; an error if the tokenizer splits it (as the reference asserts)."""
    ids = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"placeholder {placeholder!r} maps to {len(ids)} tokens {ids}; choose a single-token string")
    return int(ids[0])


def split_chunks(input_ids: torch.Tensor, chunk_size: int = 75) -> list[torch.Tensor]:
    """(B, n) ids tokenized with BOS/EOS and padding "longest" -> list of (B, chunk_size + 2) chunks.

    The reference's rule: each chunk is ``[first id] + chunk_size content ids + [last id]``; the last
    partial chunk is right-filled with the last id (EOS, or the pad id for shorter captions); an empty
    caption (n = 2) gives one chunk ``[bos] + [eos] * (chunk_size + 1)``.
    """
    batch, n = input_ids.shape
    start, end = input_ids[:, :1], input_ids[:, -1:]
    if n == 2:
        return [torch.cat([start, end.expand(batch, chunk_size + 1)], dim=1)]
    content = input_ids[:, 1:-1]
    chunks = [
        torch.cat([start, content[:, i : i + chunk_size], end], dim=1)
        for i in range(0, (n - 2) // chunk_size * chunk_size, chunk_size)
    ]
    rest = (n - 2) % chunk_size
    if rest:
        tail = content[:, -rest:]
        chunks.append(torch.cat([start, tail, end.expand(batch, chunk_size - rest), end], dim=1))
    return chunks


def lines_per_sample(line_embeds, n_lines, batch: int) -> list[torch.Tensor] | None:
    """Normalise line tokens to one (n_b, D) tensor per sample: ``line_embeds`` is either a list of B such
    tensors, or a sample-major (N, D) tensor with ``n_lines`` (B,)."""
    if line_embeds is None:
        return None
    if isinstance(line_embeds, torch.Tensor):
        if n_lines is None:
            raise ValueError("n_lines is required when line_embeds is a single (N, D) tensor")
        counts = [int(n) for n in n_lines]
        if line_embeds.ndim != 2 or sum(counts) != line_embeds.shape[0]:
            raise ValueError(
                f"line_embeds must be (sum(n_lines)={sum(counts)}, D), got shape {tuple(line_embeds.shape)}"
            )
        line_embeds = list(torch.split(line_embeds, counts, dim=0))
    else:
        line_embeds = list(line_embeds)
    if len(line_embeds) != batch:
        raise ValueError(f"line embeddings for {len(line_embeds)} samples, but {batch} captions")
    return line_embeds


def placeholder_substitutions(
    input_ids: torch.Tensor, placeholder_id: int, lines: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Which (row, column) of ``input_ids`` (B, S) receives which line token: the k-th placeholder of
    row b gets ``lines[b][k]`` for k < min(#placeholders, #lines). Extra lines are ignored (as in the
    reference); extra placeholders keep the plain placeholder embedding (the reference fails there).
    Returns (rows, cols, values) or None when nothing is substituted."""
    rows, cols, values = [], [], []
    for b in range(input_ids.shape[0]):
        positions = (input_ids[b] == placeholder_id).nonzero(as_tuple=True)[0]
        k = min(len(positions), lines[b].shape[0])
        if k == 0:
            continue
        rows.append(torch.full((k,), b, dtype=torch.long))
        cols.append(positions[:k].cpu())
        values.append(lines[b][:k])
    if not rows:
        return None
    return torch.cat(rows), torch.cat(cols), torch.cat(values)


class AnyText2CaptionEncoder:
    """Encode AnyText2's image and text captions with a frozen CLIP text encoder.

    Not a trainable model: it only borrows the pipeline's ``tokenizer`` and ``text_encoder``. Gradients
    flow through CLIP into the line tokens, never into CLIP (``freeze=True`` sets it to eval and
    ``requires_grad_(False)`` as the reference's ``FrozenCLIPEmbedderT3`` does).

    Args:
        tokenizer, text_encoder: a ``CLIPTokenizer`` and a stock ``CLIPTextModel``.
        placeholder: the line placeholder in text captions (one token).
        substitute_in_image_caption: the reference runs the substitution on image captions too (with its
            own line counter, restarted for the text caption). AnyWord training captions never contain
            ``*``, but inference prompts may; False leaves placeholders in image captions as plain tokens.
        freeze: put the text encoder in eval mode without gradients.
    """

    def __init__(
        self,
        tokenizer,
        text_encoder,
        placeholder: str = "*",
        substitute_in_image_caption: bool = True,
        freeze: bool = True,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.placeholder = placeholder
        self.placeholder_id = placeholder_token_id(tokenizer, placeholder)
        self.substitute_in_image_caption = substitute_in_image_caption
        positions = text_encoder.config.max_position_embeddings
        self.max_length = min(int(tokenizer.model_max_length), positions)
        if self.max_length < 3:
            raise ValueError(f"max_length {self.max_length} leaves no room for content tokens")
        if freeze:
            text_encoder.eval()
            text_encoder.requires_grad_(False)

    @property
    def chunk_size(self) -> int:
        return self.max_length - 2

    def tokenize_image_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, max_length * n_chunks): padding to the longest caption, no truncation, then chunked."""
        captions = _as_list(captions, "image captions")
        ids = self.tokenizer(captions, truncation=False, padding="longest", return_tensors="pt", verbose=False)[
            "input_ids"
        ]
        return torch.cat(split_chunks(ids, self.chunk_size), dim=1)

    def tokenize_text_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, max_length): padded and truncated to max_length (placeholders past it are dropped)."""
        captions = _as_list(captions, "text captions")
        return self.tokenizer(
            captions, truncation=True, max_length=self.max_length, padding="max_length", return_tensors="pt"
        )["input_ids"]

    def encode_input_ids(self, input_ids: torch.Tensor, lines: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, max_length * n) ids -> (B, max_length * n, D) context; each max_length window is encoded on its
        own (one batched CLIP call). ``lines``: per-sample (n_b, D) tokens for the placeholders, in order."""
        batch, total = input_ids.shape
        if total % self.max_length:
            raise ValueError(f"input_ids length {total} is not a multiple of {self.max_length}")
        n_chunks = total // self.max_length
        device = self.text_encoder.device
        flat = input_ids.to(device).reshape(batch * n_chunks, self.max_length)
        subs = placeholder_substitutions(input_ids, self.placeholder_id, lines) if lines is not None else None
        handle = None
        if subs is not None:
            rows, cols, values = subs
            flat_rows = (rows * n_chunks + cols // self.max_length).to(device)
            flat_cols = (cols % self.max_length).to(device)

            def substitute(module, args, output):
                return output.index_put((flat_rows, flat_cols), values.to(device=output.device, dtype=output.dtype))

            handle = self.text_encoder.get_input_embeddings().register_forward_hook(substitute)
        try:
            hidden = self.text_encoder(input_ids=flat).last_hidden_state
        finally:
            if handle is not None:
                handle.remove()
        return hidden.reshape(batch, total, hidden.shape[-1])

    def encode_image_captions(self, captions: Sequence[str], line_embeds=None, n_lines=None) -> torch.Tensor:
        ids = self.tokenize_image_captions(captions)
        lines = lines_per_sample(line_embeds, n_lines, ids.shape[0]) if self.substitute_in_image_caption else None
        return self.encode_input_ids(ids, lines)

    def encode_text_captions(self, captions: Sequence[str], line_embeds=None, n_lines=None) -> torch.Tensor:
        ids = self.tokenize_text_captions(captions)
        return self.encode_input_ids(ids, lines_per_sample(line_embeds, n_lines, ids.shape[0]))

    def __call__(
        self,
        image_captions: Sequence[str],
        text_captions: Sequence[str] | None = None,
        line_embeds=None,
        n_lines=None,
    ) -> CaptionEncoding:
        """Both contexts of a batch. ``line_embeds``: (N, D) sample-major with ``n_lines`` (B,), or a list of
        B (n_b, D) tensors; ``None`` (e.g. the CFG branch with empty text captions) substitutes nothing.
        ``text_captions=None`` gives no text context (the reference's unconditional WriteNet branch)."""
        image_ids = self.tokenize_image_captions(image_captions)
        batch = image_ids.shape[0]
        lines = lines_per_sample(line_embeds, n_lines, batch)
        image_context = self.encode_input_ids(image_ids, lines if self.substitute_in_image_caption else None)
        if text_captions is None:
            return CaptionEncoding(image_context=image_context, image_input_ids=image_ids)
        text_ids = self.tokenize_text_captions(text_captions)
        if text_ids.shape[0] != batch:
            raise ValueError(f"{batch} image captions but {text_ids.shape[0]} text captions")
        text_context = self.encode_input_ids(text_ids, lines)
        return CaptionEncoding(image_context, image_ids, text_context, text_ids)


def _as_list(captions, what: str) -> list[str]:
    if isinstance(captions, str):
        return [captions]
    captions = list(captions)
    if not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{what} must be a non-empty list of strings")
    return captions
