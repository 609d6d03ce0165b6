"""Differential expression page: Bayesian DE between two groups with an interactive volcano."""

import streamlit as st

st.title("Differential expression")
st.info(
    "This page will compare two groups of cells (clusters, annotations or lasso groups) with the "
    "model's Bayesian differential expression and show an interactive volcano plot and table. "
    "It needs a trained run (Train page) and groups (Explore page).",
    icon=":material/construction:",
)
