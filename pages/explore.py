"""Explore page: UMAP/t-SNE of the latent space, Leiden clusters, gene colouring, lasso groups."""

import streamlit as st

st.title("Explore")
st.info(
    "This page will show a UMAP or t-SNE of the trained model's latent space with Leiden clusters, "
    "colour the cells by any annotation or gene, and let you draw groups with a lasso. "
    "It needs a trained run: train one on the Train page first.",
    icon=":material/construction:",
)
