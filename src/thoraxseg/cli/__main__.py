import sys

from thoraxseg.cli import main

sys.exit(main())
