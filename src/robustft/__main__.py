"""``python -m robustft``: the command line (``torchrun -m robustft train ...`` needs it)."""

import sys

from robustft.cli import main

sys.exit(main())
