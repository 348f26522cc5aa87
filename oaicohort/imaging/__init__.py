"""DICOM series -> preprocessed volumes -> Zarr store (+ database index)."""
