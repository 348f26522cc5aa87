"""The Zarr volume store: layout, reading, writing, checks, its database index, and what is made from it (NIfTI export, QC sheets)."""
