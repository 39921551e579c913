import sys

from veason_r1.cli import main

sys.exit(main())
