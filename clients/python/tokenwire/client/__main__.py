"""``python -m tokenwire.client``: the same as the ``tokenwire`` command."""

from tokenwire.client.cli import main

raise SystemExit(main())
