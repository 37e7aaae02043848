import sys

from tunneld.cli import main

sys.exit(main())
