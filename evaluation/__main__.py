"""`python -m evaluation`: the same as the `evaluation` command."""

import sys

from evaluation.cli import main

sys.exit(main())
