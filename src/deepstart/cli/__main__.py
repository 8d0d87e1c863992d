"""``python -m deepstart.cli``: the same as the ``deepstart`` command."""

import sys

from deepstart.cli import entry

sys.exit(entry())
