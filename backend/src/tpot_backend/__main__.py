"""`python -m tpot_backend`: the same commands as `tpot-backend`.

The guard matters: local mode starts Dask worker processes, which re-import the main module.
"""

import sys

from tpot_backend.cli import main

if __name__ == "__main__":
    sys.exit(main())
