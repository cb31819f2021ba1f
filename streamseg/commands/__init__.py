"""The CLI's commands that have a module of their own (registered by streamseg.cli)."""
