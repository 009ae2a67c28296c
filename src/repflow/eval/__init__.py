"""Evaluation: the FID family with the TF Inception (FID, sFID, IS, precision/recall), CKNNA, linear probes,
and the convergence benchmark. Heavy pieces are imported from their modules, not here."""
