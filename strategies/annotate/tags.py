"""Label tags of the study set's datastore that carry a meaning for neolabel (one place for the names)."""

FINAL = "final"  # the merged partial label of all accepted submissions (what training reads)
ORIGINAL = "original"  # written by the server: shows the assignment in Slicer
BRAIN_MASK = "brain_mask"  # optional brain mask of a scan (planning uses it when present)
RESERVED = (ORIGINAL, BRAIN_MASK)  # never accepted from an upload
