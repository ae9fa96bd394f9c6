"""The annotation core: one code path from a painted labelmap to the stored partial label, for the
MONAI Label app and the simulation alike. Collaborators (datastore, predictor) come in through
constructors."""
