"""``python -m cozyd.cli``: the same as ``cozyctl``."""

import sys

from cozyd.cli.main import main

sys.exit(main())
