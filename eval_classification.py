"""Dynamic user classification with a trained user model or a baseline; see --help."""

import sys

from use.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main("classification"))
