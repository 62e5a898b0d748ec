"""Entry point: `python -m app.verify` (see app/verify/cli.py)."""

import sys

from app.verify.cli import main

sys.exit(main())
