"""``python -m bulk_mms``."""

import sys

from bulk_mms.cli import entry

sys.exit(entry())
