"""``python -m anytext2_diffusers.app`` = ``anytext2-app``."""

import sys

from .cli import main

sys.exit(main())
