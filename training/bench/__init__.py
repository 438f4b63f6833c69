"""The noise benchmark: the loss x noise-rate grid and its report."""
