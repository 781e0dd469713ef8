"""Code shared by the coordinator and the workers: data, splits, model, training, storage."""
