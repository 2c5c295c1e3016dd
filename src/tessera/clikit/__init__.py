"""tessera.clikit: the toolkit every `tessera` command is written with.

    session.py    `Session`: one invocation's API URL, output mode and HTTP client
    output.py     `Output`: tables, objects and ids in human, --json and -q modes
    params.py     parsers of command-line values into API field values (`convert`)
    commands.py   `command`: registration adding --json/-q/--api and the session
    group.py      `TesseraGroup`: one-line errors and exit codes, lazily loaded plugins

The commands themselves and their assembly into `tessera` are in `tessera.cli`; the lab's
commands (`tessera.lab.cli`) use this toolkit too, which is why it is a package of its
own: `tessera.cli` imports the lab (as a plugin), so the lab cannot import `tessera.cli`.
"""
