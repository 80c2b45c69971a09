"""``python -m tenantsearch``: the same as the ``tenantsearch`` command."""

from tenantsearch.cli import main

main()
