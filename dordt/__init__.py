"""dordt: the command line of the Dordrecht edge sensor fleet (see dordt/cli.py)."""
