"""python -m recsys train | tune | export | evaluate (see recsys/cli.py)."""

import sys

from recsys.cli import main

sys.exit(main())
