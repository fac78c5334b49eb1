"""Train AnyText2 on the Hugging Face stack.

    accelerate launch examples/train_anytext2.py --demo            # offline CPU demo, a few minutes
    accelerate launch examples/train_anytext2.py --pretrained_model_name_or_path PATH \\
        --train_data /data/*/data_v1.2b.json --output_dir anytext2-model
    accelerate launch examples/train_anytext2.py --config my_run.yaml --learning_rate 1e-5

Every option (and ``--config FILE.yaml`` with the same keys) is documented in docs/training.md and
``--help``; all logic lives in ``anytext2_diffusers.training``.
"""

import sys

from anytext2_diffusers.training import main

if __name__ == "__main__":
    sys.exit(main())
