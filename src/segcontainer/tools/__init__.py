"""``segcontainer`` subcommands beside train and serve: predict, recordio, demo."""
