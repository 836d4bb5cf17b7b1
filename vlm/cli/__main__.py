"""``python -m vlm.cli``: the same as the ``vlm`` command."""
import sys

from . import main

sys.exit(main())
