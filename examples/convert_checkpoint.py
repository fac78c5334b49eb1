"""Convert AnyText2 checkpoints between the original (ldm/ControlLDM) and the diffusers layout.

    # released AnyText2 weights -> pipeline folder
    python examples/convert_checkpoint.py --from_original anytext_v2.0.ckpt \
        --clip_model_name_or_path ./stable-diffusion-v1-5 --output_dir ./anytext2
    # SD1.5 -> fresh AnyText2 to train from scratch (OCR weights: folder, ppv3_rec.pth, or the ONNX default)
    python examples/convert_checkpoint.py --from_sd15 ./stable-diffusion-v1-5 --output_dir ./anytext2-scratch
    # trained pipeline folder -> original checkpoint for the reference code / ComfyUI / ModelScope
    python examples/convert_checkpoint.py --to_original ./anytext2.safetensors --pipeline_dir ./my-run

Options and checks live in ``anytext2_diffusers.conversion.cli`` (also the ``anytext2-convert`` command).
"""

import sys

from anytext2_diffusers.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
