import sys

from minbert.cli import main

sys.exit(main())
