"""Choices the pages make from a dataset's columns: the preselected batch key."""

from dashboard.summary import default_batch_key


def test_batch_key_defaults_to_a_column_named_like_a_batch():
    assert default_batch_key(["cell_type", "donor", "condition"]) == "donor"  # the bundled sample
    assert default_batch_key(["Sample", "louvain"]) == "Sample"
    assert default_batch_key(["cell_type", "donor_id", "batch"]) == "batch"  # "batch" says it best
    assert default_batch_key(["tech", "celltype"]) == "tech"  # the pancreas data
    assert default_batch_key(["technology"]) == "technology"
    assert default_batch_key(["resample_flag", "cell_type"]) is None  # a word inside another word
    assert default_batch_key([]) is None


def test_load_messages_in_anndata_words_go_to_the_scanpy_detail():
    from dashboard.summary import split_load_messages

    messages = ["Counts were taken from X.", "Gene names are shown from var['gene_symbol'].",
                "Counts were taken from layers['counts'] (X looks log-normalised).",
                "12 cells with no counts at all were dropped.",
                "3 duplicated gene names were made unique (e.g. TBCE, TBCE-1)."]
    everyone, scanpy_users = split_load_messages(messages)
    assert everyone == messages[3:]
    assert scanpy_users == messages[:3]


def test_cell_annotations_are_described_as_labels_or_numbers():
    import anndata as ad
    import pandas as pd

    from dashboard.summary import obs_columns_table
    from engine.reading.load import summarize

    adata = ad.AnnData(obs=pd.DataFrame({"donor": pd.Categorical(["a", "b", "a"]), "total_counts": [1.0, 2.0, 3.0],
                                         "n_genes": [1, 2, 3], "flag": [True, False, True]},
                                        index=["c1", "c2", "c3"]))
    table = obs_columns_table(summarize(adata)).set_index("column")
    assert table["type"].to_dict() == {"donor": "labels", "total_counts": "numbers", "n_genes": "numbers",
                                       "flag": "labels"}
    assert table.loc["donor", "categories"] == "2"
