"""``python -m mcobserve.bench``: run the benchmark (same options as ``mcobserve bench``)."""

import sys

from mcobserve.cli.bench import main

sys.exit(main())
