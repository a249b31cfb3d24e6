"""Training data: phantoms, LIDC-IDRI and LUNA16 cases, the on-disk case cache."""
