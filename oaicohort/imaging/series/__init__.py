"""One image series from disk: where its files are, reading it, checking it against the index, orienting it."""
