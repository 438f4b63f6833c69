"""Everything before the model: manifests, decoding and clip sampling, the Dataset, synthetic data, label noise."""
