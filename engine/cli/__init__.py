"""The command line, one module per command: ``python -m engine --help`` lists them."""
