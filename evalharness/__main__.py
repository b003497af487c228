"""`python -m evalharness ...`: the same command line as the `evalharness` console script."""

import sys

from evalharness.cli import main

if __name__ == "__main__":
    sys.exit(main())
