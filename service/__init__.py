"""The command line, the REST API and the workers: the user-facing layer of Sweetspot."""
