"""``python -m archer_cli ...``: the ``archer`` command (also under torchrun)."""

import sys

from archer_cli.main import main

sys.exit(main())
