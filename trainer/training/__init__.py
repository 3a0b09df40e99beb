"""Training: one file per trainer (textual_inversion, hypernetwork) and the small pieces they share: settings
(config), dataset, latent cache, learning-rate schedule, loss history, validation, vector health."""
