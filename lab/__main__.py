"""`python -m lab` is `vfio-lab`."""

import sys

from lab.cli import main

sys.exit(main())
