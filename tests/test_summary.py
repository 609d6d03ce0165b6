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
