"""`python -m polling_server` runs the command line."""

import sys

from polling_server.cli import main

sys.exit(main())
