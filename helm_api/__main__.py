"""``python -m helm_api``: the same as the ``helm-api`` command."""

import sys

from helm_api.cli import main

sys.exit(main())
