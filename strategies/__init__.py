"""Which scans and slices are labelled next, and what an annotation becomes (no torch, no MONAI Label).

``plan``: pure, seeded budget planning on numpy (anatomical axes, brain extents, the budget
planner, incremental assignment with leases, slice ranking). ``annotate``: the annotation core
that the server *and* the simulation's oracle use — settings, state, leases, turning a painted
labelmap into a partial label, the ``original`` label, model outputs → brain extents and slice
scores, retraining triggers. ``annotate`` builds on ``plan``; both may use ``training.data``.
"""
