import sys

from bridge.i18n.tool import main

sys.exit(main())
