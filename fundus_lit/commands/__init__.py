"""One module per CLI verb: its parser and its run function."""
