"""`python -m nemotron_train.convert ...` (see nemotron_train/convert/cli.py)."""

import sys

from nemotron_train.convert.cli import main

sys.exit(main())
