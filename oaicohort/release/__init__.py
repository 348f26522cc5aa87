"""Reading an OAI release as users hold it: discovery, table readers, value parsing, image indexes. No database."""
