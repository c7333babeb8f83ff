"""`python3 -m p11ne` inside the ACM enclave image."""

import sys

from .main import main

sys.exit(main())
