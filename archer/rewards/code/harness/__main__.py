"""``python -m archer.rewards.code.harness``: print the harness script (its parts joined)."""

import sys

from archer.rewards.code.harness import HARNESS

sys.stdout.write(HARNESS)
