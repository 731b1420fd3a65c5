"""``python -m unigen ...``: the same command line as the ``unigen`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
