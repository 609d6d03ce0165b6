"""The scVI-style model: options, likelihoods, the VAE, its training and inference (all but ``params`` need torch)."""
