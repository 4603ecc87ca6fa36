"""`python -m atomplug.cli ...`: the `atomplug` command."""

import sys

from .command import main

sys.exit(main())
