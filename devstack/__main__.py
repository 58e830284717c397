"""``python -m devstack up|down|status``: see devstack.stack."""

from devstack.stack import main

raise SystemExit(main())
