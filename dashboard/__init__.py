"""Streamlit glue for Atlas Explorer: the science lives in :mod:`engine`; this package caches and displays it.

It holds per-session state, cached engine calls, background jobs and pure Plotly figure builders.
"""
