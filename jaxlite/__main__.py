import sys

from jaxlite.cli import main

sys.exit(main())
