"""Training Res-MTNet: the loop, hard negatives, validation, the recipe file."""
