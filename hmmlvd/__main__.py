"""``python -m hmmlvd`` runs the command line."""

import sys

from hmmlvd.cli import main

sys.exit(main())
