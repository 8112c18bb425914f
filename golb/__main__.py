"""
C{python -m golb check PATH}.
"""

import sys

from golb.cli import main

sys.exit(main())
