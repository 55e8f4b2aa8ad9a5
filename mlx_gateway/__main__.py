"""`python -m mlx_gateway`."""

import sys

from mlx_gateway.cli import main

sys.exit(main())
