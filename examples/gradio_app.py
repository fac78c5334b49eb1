"""AnyText2 in the browser (Gradio): generate text into images, or edit the text of an image.

    python examples/gradio_app.py                                   # the demo output, else the tiny model
    python examples/gradio_app.py --pretrained_model_name_or_path ./anytext2 --device cuda --dtype fp16

Same as the ``anytext2-app`` command; the logic lives in ``anytext2_diffusers.app``.
"""

import sys

from anytext2_diffusers.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
