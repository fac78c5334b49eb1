"""Convert AnyText2 checkpoints between the original (ldm/ControlLDM) and the diffusers layout.

    # released AnyText2 weights -> pipeline folder
    python examples/convert_checkpoint.py --from_original anytext_v2.0.ckpt \
        --clip_model_name_or_path ./stable-diffusion-v1-5 --output_dir ./anytext2
    # SD1.5 -> fresh AnyText2 to train from scratch (OCR weights: folder, ppv3_rec.pth, or the ONNX default)
    python examples/convert_checkpoint.py --from_sd15 ./stable-diffusion-v1-5 --output_dir ./anytext2-scratch
    # trained pipeline folder -> original checkpoint for the reference code / ComfyUI / ModelScope
    python examples/convert_checkpoint.py --to_original ./anytext2.safetensors --pipeline_dir ./my-run
"""

import argparse
import sys

from anytext2_diffusers.conversion.pipeline_io import (
    DTYPES,
    convert_original_to_pipeline,
    convert_pipeline_to_original,
    convert_sd15_to_pipeline,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--from_original", metavar="CKPT", help="original AnyText2 .ckpt/.pth/.safetensors")
    mode.add_argument("--from_sd15", metavar="PATH", help="SD1.5 diffusers folder or single-file checkpoint")
    mode.add_argument("--to_original", metavar="OUT.safetensors", help="write an original checkpoint")
    parser.add_argument("--output_dir", help="pipeline folder to write (--from_original / --from_sd15)")
    parser.add_argument("--pipeline_dir", help="pipeline folder to read (--to_original)")
    parser.add_argument("--original_config", default=None, help="reference model yaml (default: shipped SD1.5)")
    parser.add_argument("--clip_model_name_or_path", default=None, help="local folder with the CLIP tokenizer")
    parser.add_argument("--ocr_model", default=None, help="OCR weights for --from_sd15 (default: rapidocr ONNX)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)
    if (args.from_original or args.from_sd15) and not args.output_dir:
        parser.error("--output_dir is required")
    if args.to_original and not args.pipeline_dir:
        parser.error("--pipeline_dir is required with --to_original")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_original:
        report = convert_original_to_pipeline(
            args.from_original, args.output_dir, args.original_config, args.clip_model_name_or_path, args.dtype
        )
        print(report.format())
        print(f"wrote {args.output_dir}")
    elif args.from_sd15:
        convert_sd15_to_pipeline(
            args.from_sd15,
            args.output_dir,
            args.ocr_model,
            args.original_config,
            args.clip_model_name_or_path,
            args.dtype,
        )
        print(f"wrote {args.output_dir}")
    else:
        n = convert_pipeline_to_original(args.pipeline_dir, args.to_original, args.original_config, args.dtype)
        print(f"wrote {n} tensors to {args.to_original}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
