"""`python -m exo_actor.cli`: the same as the `exo-actor` console script."""

import sys

from . import main

sys.exit(main())
