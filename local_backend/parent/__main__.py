import sys

from local_backend.parent.agent import main

sys.exit(main())
