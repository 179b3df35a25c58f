"""`mailroom <command>` (or `python -m webapp <command>`): the commands of `flask --app webapp <command>`
without Flask's command line, which loads every installed Flask extension's commands (and what they
import) before running any."""
import sys

import click
from flask.cli import ScriptInfo

from . import cli, create_app


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    pages = not cli.without_pages(args)
    app = ScriptInfo(create_app=lambda: create_app(pages=pages), set_debug_flag=False)
    cli.commands.main(args, prog_name="mailroom", obj=app)


if __name__ == "__main__":
    main()
