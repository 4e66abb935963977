"""``python -m vqalab ...`` (and ``torchrun --nproc-per-node=N -m vqalab train PARAMS.yaml``): the CLI."""

import sys

from vqalab.cli import main

if __name__ == "__main__":
    sys.exit(main())
