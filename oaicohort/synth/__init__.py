"""Synthetic OAI releases: clinical tables and DESS image series in the real formats.

``write_release(out, subjects=4796, seed=0)`` writes the clinical release, the baseline image
index and ``synth_truth.csv``; ``oaicohort.synth.images.write_images`` adds the DICOM series.
"""

from oaicohort.synth.clinical import OAI_SIZE, TRUTH_FILE, SynthSummary, write_release

__all__ = ["OAI_SIZE", "TRUTH_FILE", "SynthSummary", "write_release"]
