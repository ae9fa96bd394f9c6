"""Pure, seeded planning of which scans and slices to annotate (numpy + nibabel only, no torch).

Modules: ``axes`` (anatomical axes from the affine), ``extents`` (per-image planning metadata and
its cache), ``budget`` (label budgeting), ``incremental`` (next assignment for one annotator with
leases), ``assignment`` (the ``SliceAssignment`` JSON contract), ``masks`` (partial labels),
``uncertainty`` and ``random_fg`` (slice ranking). Import the submodules directly.
"""
