"""tessera.cli: the `tessera` command — the resource commands and their assembly (`main`).

Written with the toolkit `tessera.clikit` (session, output, params, command registration,
the root group) and the HTTP client `tessera.client`; `main.PLUGINS` adds the commands of
other packages (the agent, the lab) and `tessera trace` (`trace.py`). Nothing else in
tessera imports this package.
"""
