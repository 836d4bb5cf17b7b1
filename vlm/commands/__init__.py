"""Subcommands of the ``vlm`` CLI (see ``vlm.cli.COMMANDS``)."""
