"""What tests share besides fixtures: builders, constants and checks, one module per subject.

Test modules import from here only, never from another test module or a conftest
(tests/test_architecture.py holds the suite to it). Fixtures live in the conftest.py files and
are built on these helpers:

- ``databases``: back-ends, throw-away and migrated database copies (tests/conftest.py)
- ``releases``: shared synthetic releases (session fixtures in tests/conftest.py)
- ``reliability``: running the real ``oai`` in a subprocess, killing it, comparing tables
- ``training``: the toy 3D model and a toy store with its cohort
- ``toy_run``: a trained toy run the integrity tests copy
- ``launcher``: two toy models and a cohort for submitit / SLURM jobs
- ``planted``: a 2D model and cohort with a planted lesion (attribution tests)
- ``cohort_rows``: hand-made subjects, knees and readings
- ``study_release``: the hand-written release of the study tests
- ``mri_release``: small DESS series on disk with their image_series rows
- ``distributions``: a form-independent dump of an ingested database
"""
