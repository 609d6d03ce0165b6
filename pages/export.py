"""Export page: download the AnnData, DE tables, figures and the model bundle."""

import streamlit as st

st.title("Export")
st.info(
    "This page will let you download the annotated dataset as .h5ad (opens in scanpy and "
    "cellxgene), differential-expression tables as CSV, figures, and the trained model. "
    "It needs a dataset (Data page) and, for most downloads, a trained run (Train page).",
    icon=":material/construction:",
)
