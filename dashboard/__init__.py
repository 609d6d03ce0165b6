"""Streamlit glue for Atlas Explorer: per-session state, cached engine calls, background jobs and
pure Plotly figure builders. The science lives in :mod:`engine`; this package caches and displays it.
"""
