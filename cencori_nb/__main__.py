"""``python -m cencori_nb`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
