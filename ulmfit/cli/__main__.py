"""``python -m ulmfit.cli``: the ``ulmfit`` command."""

import sys

from ulmfit.cli import main

sys.exit(main())
