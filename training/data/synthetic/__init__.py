"""Synthetic dHCP-like neonatal brain MRI (T2w, T1w, drawem9 label) for tests, demos and benchmarks.

Why: the real dHCP data cannot ship with the project, yet every part (data reading, budget
planning, masked training, the server, simulation) needs volumes that look and are laid out like
dHCP release 3. Several classes share intensities on purpose (ventricles = CSF, hippocampus ≈
cortex, deep GM ≈ cortex, brainstem ≈ white matter, eyes and dura ≈ CSF), so a model must use
spatial context, as with real data. Numpy/scipy/nibabel only, and everything is seeded.

The modules follow the generation steps (import from them; this package re-exports nothing):

- :mod:`.params` draws every random quantity of a subject from a seeded generator into a frozen
  ``SubjectParams`` (also study-set metadata: ``subject_info``, ``SubjectInfo``).
- :mod:`.render` turns params into volumes deterministically (``render_subject``,
  ``SyntheticSubject``, ``affine_for``).
- :mod:`.acquisition` optionally re-acquires the images as thick slices along one anatomical axis.
- :mod:`.write` composes the steps (``generate_subject``, ``iter_subjects``) and writes dHCP
  release-3 trees and MONAI Label studies folders (``write_study_set``, ``write_studies_folder``).
"""
