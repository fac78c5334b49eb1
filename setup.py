"""Packaging for anytext2-diffusers (src layout).

Lower bounds are the oldest releases the code and tests work with: `.ci/run` installs them
(`uv pip install --resolution lowest-direct`) and runs a fast subset of the tests (docs/installation.md).
"""

import re

from setuptools import find_namespace_packages, setup

# One version string: the package's own __version__ (read as text: setup must not import the package).
with open("src/anytext2_diffusers/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

CORE = [
    "torch>=2.13,<3",
    "diffusers>=0.37,<1",
    "accelerate>=1.15,<2",
    "transformers>=5.13,<6",
    "peft>=0.18,<1",
    "datasets>=4.0,<6",
    "safetensors>=0.8,<1",
    "huggingface_hub>=1.5,<3",
    "opencv-python-headless>=4.10.0.84",
    "pillow>=10,<14",
    "numpy>=2.0,<3",
    "pyyaml>=6",
    "tensorboard>=2.17.1,<3",
    "tqdm>=4.66.3",
    "fonttools>=4.40",
    # Traditional/simplified Chinese split of every Chinese line (pure-Python OpenCC).
    "opencc-python-reimplemented>=0.1.7",
]

EXTRAS = {
    # PP-OCRv3 real weights (recognizer and text detector) ship inside rapidocr-onnxruntime==1.2.3, which
    # requires the GUI opencv-python that fights the core opencv-python-headless over cv2. We only read
    # its ONNX files, so it is installed on its own without dependencies (README, .ci/run):
    #   pip install --no-deps rapidocr-onnxruntime==1.2.3
    # onnx reads the recognizer for conversion; onnxruntime runs the detector (anytext2-annotate).
    "ocr": ["onnx>=1.15", "onnxruntime>=1.17"],
    "eval": ["scipy>=1.10"],
    # FID's standard Inception features (brings torchvision; not part of test/dev).
    "fid": ["pytorch-fid>=0.3"],
    "wandb": ["wandb"],
    # DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml); tests/test_deepspeed.py runs it on CPU processes.
    "deepspeed": ["deepspeed>=0.19.8,<0.20"],
    # --use_8bit_adam: bitsandbytes' AdamW8bit; from 0.50 it also runs on CPUs (tests/test_training_options.py).
    "bnb": ["bitsandbytes>=0.50"],
    # The browser app (anytext2-app, examples/gradio_app.py); gradio_client comes with gradio.
    "app": ["gradio>=6,<7"],
}
EXTRAS["test"] = sorted(
    set(
        EXTRAS["ocr"]
        + EXTRAS["eval"]
        + EXTRAS["deepspeed"]
        + EXTRAS["app"]
        + EXTRAS["bnb"]
        # drives Debian's chromium in tests/test_app_browser.py (the browser itself comes from apt, see .ci/run)
        + ["pytest>=7", "pytest-timeout>=2", "selenium>=4.20,<5"]
    )
)
EXTRAS["dev"] = sorted(set(EXTRAS["test"] + ["ruff>=0.4"]))

setup(
    name="anytext2-diffusers",
    version=VERSION,
    description="AnyText2 (multilingual visual text generation and editing) training suite on diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_namespace_packages("src", include=["anytext2_diffusers*"]),
    include_package_data=True,
    # assets/**: the fonts, the OCR class table and the demo model (assets/demo_model: testing.demo_pipeline()).
    package_data={"anytext2_diffusers": ["configs/**/*", "assets/**/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "anytext2-annotate=anytext2_diffusers.annotation.cli:main",
            "anytext2-convert=anytext2_diffusers.conversion.cli:main",
            "anytext2-convert-ocr=anytext2_diffusers.models.ocr.convert:main",
            "anytext2-export-dataset=anytext2_diffusers.data.cli:export_main",
            "anytext2-make-demo-data=anytext2_diffusers.data.cli:make_demo_data_main",
            "anytext2-preview-dataset=anytext2_diffusers.data.cli:preview_main",
            "anytext2-eval=anytext2_diffusers.evaluation.cli:main",
            "anytext2-train=anytext2_diffusers.training:main",
            "anytext2-app=anytext2_diffusers.app.cli:main",
        ]
    },
)
