import sys

from humanverse.cli import main

sys.exit(main())
