"""The coordinator: creates experiments (one Optuna study per fold) and reports on them."""
