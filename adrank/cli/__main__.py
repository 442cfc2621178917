"""``python -m adrank.cli ...`` (what torchrun launches): the same as the `adrank` command."""

import sys

from adrank.cli.main import main

sys.exit(main())
