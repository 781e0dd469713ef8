"""The worker: pulls trials of an experiment's fold studies, trains them and reports ROC-AUC."""
