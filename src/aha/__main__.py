"""`python -m aha` runs the `aha` command."""

import sys

from aha.cli import main

if __name__ == "__main__":
    sys.exit(main())
