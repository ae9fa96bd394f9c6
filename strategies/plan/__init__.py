"""Pure, seeded planning (numpy + nibabel): same config + seed = same plan."""
