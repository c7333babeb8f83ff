"""`python3 -m enclave_app` (or `-m app` inside an EIF built by enclavekit): run the enclave."""

import sys

from .main import main

sys.exit(main())
