"""``oai preprocess`` runs: the single writer of a store and its index, and the worker processes that read and preprocess series."""
