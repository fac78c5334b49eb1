"""Real PP-OCRv3 weights, offline: ONNX (as shipped by rapidocr-onnxruntime) or AnyText2 state dicts.

ONNX: the Paddle export stores weights as ``Constant`` nodes (or initializers) named after Paddle
parameters (``conv2d_37.w_0``, ``batch_norm_27.w_1`` ...). Names carry no structure, so the converter
walks the graph in execution order and pairs each Conv / BatchNormalization / LayerNorm / MatMul with
the module our network executes at the same position, checking kinds, shapes and epsilons. The class
table comes from the ``character`` metadata entry.

AnyText2: ``ppv3_rec.pth`` and the ``text_predictor.*`` / ``embedding_manager.font_predictor.*``
parts of a full checkpoint already use our key names; loading is strict and upcasts to float32.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...utils.checkpoint_io import load_state_dict_file
from .modeling_ppocr import PPOCRRecognizer
from .rapidocr_files import RAPIDOCR_REC_MODEL, rapidocr_model_path
from .vocab import build_character_list

ANYTEXT2_PREFIXES = ("text_predictor.", "embedding_manager.font_predictor.")


class OCRConversionError(RuntimeError):
    """The weights do not fit the PP-OCRv3 recognizer; the message names the file and the node/key."""


def default_onnx_path() -> Path:
    """``ch_PP-OCRv3_rec_infer.onnx`` inside the installed rapidocr-onnxruntime package."""
    try:
        return rapidocr_model_path(RAPIDOCR_REC_MODEL)
    except FileNotFoundError as err:
        raise OCRConversionError(f"{err} (or pass --onnx PATH)") from err


def _load_onnx(path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OCRConversionError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError & co.
        raise OCRConversionError(f"{path}: not a readable ONNX model ({err})") from err


def read_onnx_characters(path) -> list[str]:
    """The dictionary stored in the export's ``character`` metadata (one character per line)."""
    model = _load_onnx(path) if not hasattr(path, "graph") else path
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise OCRConversionError(f"{path}: no 'character' entry in metadata_props (keys: {sorted(meta)})")
    return meta["character"].splitlines()


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    return tensors


def _onnx_layers(model, path) -> dict[str, list[dict]]:
    """Weighted layers of the graph in node order, by kind: conv, bn, ln, linear."""
    consts = _constants(model)
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def bias_after(output: str, size: int, weight_name: str) -> np.ndarray | None:
        # Paddle exports add a bias as Add(out, b) or Add(out, Reshape(b)).
        for n in consumers.get(output, []):
            if n.op_type != "Add":
                continue
            for i in n.input:
                if i == output:
                    continue
                if i in consts and consts[i].size == size and consts[i].ndim <= 1:
                    return consts[i].reshape(-1)
                producer = next((p for p in nodes if i in p.output and p.op_type == "Reshape"), None)
                if producer is not None and producer.input[0] in consts and consts[producer.input[0]].size == size:
                    return consts[producer.input[0]].reshape(-1)
        return None

    layers: dict[str, list[dict]] = {"conv": [], "bn": [], "ln": [], "linear": []}
    ln_seen: set[str] = set()
    for n in nodes:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv":
            w = consts.get(n.input[1])
            if w is None:
                raise OCRConversionError(f"{path}: Conv node {n.name or n.output[0]} has a non-constant weight")
            b = (
                consts[n.input[2]]
                if len(n.input) > 2 and n.input[2]
                else bias_after(n.output[0], w.shape[0], n.input[1])
            )
            layers["conv"].append({"name": n.input[1], "weight": w, "bias": b})
        elif n.op_type == "BatchNormalization":
            eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
            scale, shift, mean, var = (consts[i] for i in n.input[1:5])
            layers["bn"].append(
                {"name": n.input[1], "weight": scale, "bias": shift, "mean": mean, "var": var, "eps": eps}
            )
        elif n.op_type == "LayerNormalization":
            eps = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
            layers["ln"].append(
                {"name": n.input[1], "weight": consts[n.input[1]], "bias": consts[n.input[2]], "eps": eps}
            )
        elif n.op_type == "Sqrt":
            # Decomposed LayerNorm: Sqrt(var + eps), then (x - mean) / sqrt * gamma + beta via Reshape(gamma/beta).
            add = next(p for p in nodes if n.input[0] in p.output)
            eps = float(next(consts[i] for i in add.input if i in consts))
            div = next(c for c in consumers[n.output[0]] if c.op_type == "Div")
            mul = next(c for c in consumers[div.output[0]] if c.op_type == "Mul")
            gamma_src = next(i for i in mul.input if i != div.output[0])
            add2 = next(c for c in consumers[mul.output[0]] if c.op_type == "Add")
            beta_src = next(i for i in add2.input if i != mul.output[0])

            def resolve(name):
                if name in consts:
                    return name
                producer = next(p for p in nodes if name in p.output)
                return producer.input[0]

            g, b = resolve(gamma_src), resolve(beta_src)
            if g in ln_seen:
                continue
            ln_seen.add(g)
            layers["ln"].append({"name": g, "weight": consts[g], "bias": consts[b], "eps": eps})
        elif n.op_type in ("MatMul", "Gemm") and n.input[1] in consts and consts[n.input[1]].ndim == 2:
            w = consts[n.input[1]]
            trans_b = n.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
            w = w if trans_b else w.T  # torch Linear stores (out, in)
            if n.op_type == "Gemm" and len(n.input) > 2:
                b = consts[n.input[2]]
            else:
                b = bias_after(n.output[0], w.shape[0], n.input[1])
            layers["linear"].append({"name": n.input[1], "weight": w, "bias": b})
    return layers


def _execution_order(model: nn.Module, height: int, width: int) -> dict[str, list[tuple[str, nn.Module]]]:
    """Our weighted modules by kind, in the order a forward pass calls them."""
    kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.LayerNorm: "ln", nn.Linear: "linear"}
    order: dict[str, list[tuple[str, nn.Module]]] = {k: [] for k in kinds.values()}
    handles = []
    for name, module in model.named_modules():
        kind = kinds.get(type(module))
        if kind is not None:
            handles.append(module.register_forward_hook(lambda m, i, o, n=name, k=kind: order[k].append((n, m))))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.config.in_channels, height, width))
    finally:
        for h in handles:
            h.remove()
    return order


def onnx_to_state_dict(model_onnx, recognizer: PPOCRRecognizer, path="<onnx>") -> dict[str, torch.Tensor]:
    """Map the ONNX weights onto ``recognizer``'s keys (execution-order pairing, all checked)."""
    found = _onnx_layers(model_onnx, path)
    ours = _execution_order(recognizer, recognizer.config.image_height, recognizer.config.image_width)
    state: dict[str, torch.Tensor] = {}

    def put(key, value, expected_shape, src):
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != tuple(expected_shape):
            raise OCRConversionError(
                f"{path}: {src} has shape {tuple(value.shape)} but {key} expects {tuple(expected_shape)}"
            )
        state[key] = torch.from_numpy(value.copy())

    for kind in ("conv", "bn", "ln", "linear"):
        if len(found[kind]) != len(ours[kind]):
            raise OCRConversionError(
                f"{path}: {len(found[kind])} {kind} layers in the graph, the PP-OCRv3 recognizer has {len(ours[kind])}"
            )
        for src, (name, module) in zip(found[kind], ours[kind]):
            put(f"{name}.weight", src["weight"], module.weight.shape, src["name"])
            if kind == "bn":
                put(f"{name}.bias", src["bias"], module.bias.shape, src["name"])
                put(f"{name}.running_mean", src["mean"], module.running_mean.shape, src["name"])
                put(f"{name}.running_var", src["var"], module.running_var.shape, src["name"])
                state[f"{name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
            elif getattr(module, "bias", None) is not None:
                if src["bias"] is None:
                    raise OCRConversionError(f"{path}: no bias found for {src['name']} ({name} has one)")
                put(f"{name}.bias", src["bias"], module.bias.shape, src["name"])
            elif src.get("bias") is not None:
                raise OCRConversionError(f"{path}: {src['name']} has a bias but {name} has none")
            if kind in ("bn", "ln") and not np.isclose(src["eps"], module.eps, rtol=1e-3, atol=0):
                raise OCRConversionError(
                    f"{path}: {src['name']} epsilon {src['eps']} differs from {name}.eps {module.eps}"
                )
    return state


def convert_onnx(onnx_path=None, **config_overrides) -> PPOCRRecognizer:
    """A float32 ``PPOCRRecognizer`` with the weights and class table of a PP-OCRv3 rec ONNX export."""
    path = Path(onnx_path) if onnx_path is not None else default_onnx_path()
    model_onnx = _load_onnx(path)
    characters = build_character_list(read_onnx_characters(model_onnx))
    recognizer = PPOCRRecognizer(num_classes=len(characters), characters=characters, **config_overrides)
    state = onnx_to_state_dict(model_onnx, recognizer, path)
    _load_strict(recognizer, state, str(path), "")
    return recognizer.eval()


def _load_strict(recognizer: nn.Module, state: Mapping[str, torch.Tensor], source: str, prefix: str) -> None:
    expected = recognizer.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{prefix}{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {[prefix + k for k in missing[:5]]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys, e.g. {[prefix + k for k in unexpected[:5]]}")
        if wrong:
            parts.append(f"shape mismatch: {wrong[:5]}")
        raise OCRConversionError(f"{source}: cannot load the PP-OCRv3 recognizer: " + "; ".join(parts))
    converted = {}
    for k, v in state.items():
        ref = expected[k]
        converted[k] = v.to(dtype=ref.dtype) if v.is_floating_point() or ref.is_floating_point() else v
    recognizer.load_state_dict(converted, strict=True)


def load_anytext2_ocr_state_dict(
    recognizer: PPOCRRecognizer, state_dict: Mapping[str, torch.Tensor], prefix: str = "", source: str = "state dict"
) -> PPOCRRecognizer:
    """Load ``ppv3_rec.pth``-layout weights, or a full AnyText2 state dict's ``prefix``-ed part
    (``text_predictor.`` / ``embedding_manager.font_predictor.``). Strict: every key of the recognizer
    must be present with its shape and nothing else under the prefix; floats are cast to the model dtype."""
    if prefix:
        sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not sub:
            heads = sorted({k.split(".")[0] for k in state_dict})[:10]
            raise OCRConversionError(f"{source}: no keys start with {prefix!r} (top-level names: {heads})")
    else:
        sub = dict(state_dict)
    _load_strict(recognizer, sub, source, prefix)
    return recognizer


def read_state_dict_file(path) -> dict[str, torch.Tensor]:
    """``.safetensors`` or a torch pickle read with ``weights_only=True`` (a ``state_dict`` entry is unwrapped)."""
    try:
        return load_state_dict_file(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise OCRConversionError(str(err)) from err


def recognizer_from_anytext2(
    state_dict_or_path, prefix: str = "", characters: list[str] | None = None, **config_overrides
) -> PPOCRRecognizer:
    """Build a float32 recognizer from AnyText2 weights (a path or a loaded dict); ``characters``
    defaults to the PP-OCR table shipped with the package."""
    from .vocab import load_character_list

    source = str(state_dict_or_path) if isinstance(state_dict_or_path, (str, os.PathLike)) else "state dict"
    state = read_state_dict_file(state_dict_or_path) if source != "state dict" else state_dict_or_path
    if characters is None:
        characters = load_character_list()
    num_classes = config_overrides.pop("num_classes", None)
    if num_classes is None:
        head = state.get(f"{prefix}head.fc.bias")
        num_classes = int(head.shape[0]) if head is not None else len(characters)
    if len(characters) != num_classes:
        characters = None  # e.g. a tiny or English model: a table of another size cannot decode it
    recognizer = PPOCRRecognizer(num_classes=num_classes, characters=characters, **config_overrides)
    return load_anytext2_ocr_state_dict(recognizer, state, prefix, source).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="anytext2-convert-ocr",
        description="Write the PP-OCRv3 recognizer as a diffusers save_pretrained folder (offline).",
    )
    parser.add_argument("--output_dir", required=True, help="folder for config.json + safetensors weights")
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--onnx", default=None, help="ch_PP-OCRv3_rec_infer.onnx (default: the one in rapidocr-onnxruntime)"
    )
    src.add_argument(
        "--state_dict", default=None, help="AnyText2 ppv3_rec.pth or a full checkpoint (.pth/.ckpt/.safetensors)"
    )
    parser.add_argument("--prefix", default="", help="key prefix inside --state_dict, e.g. 'text_predictor.'")
    parser.add_argument(
        "--dict", default=None, help="character dictionary for --state_dict (default: shipped ppocr_keys_v1)"
    )
    args = parser.parse_args(argv)
    if args.state_dict:
        from .vocab import load_character_list

        recognizer = recognizer_from_anytext2(args.state_dict, args.prefix, load_character_list(args.dict))
    else:
        recognizer = convert_onnx(args.onnx)
    recognizer.save_pretrained(args.output_dir)
    print(f"saved PPOCRRecognizer ({recognizer.config.num_classes} classes) to {args.output_dir}")


if __name__ == "__main__":
    main()
