"""What is done with a trained latent space: neighbours, embeddings, clusters, batch mixing, DE."""
