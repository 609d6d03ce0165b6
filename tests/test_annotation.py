"""Suggested cell-type names: scoring against a marker table, the shipped table, a user's CSV."""

from __future__ import annotations

import pandas as pd
import pytest

from engine.analysis.annotation import read_reference, reference_markers, suggest_names
from engine.analysis.markers import find_markers


def _markers(groups: dict[str, list[str]]) -> pd.DataFrame:
    rows = [{"group": g, "rank": i + 1, "gene": gene} for g, genes in groups.items() for i, gene in enumerate(genes)]
    return pd.DataFrame(rows)


def test_best_cell_type_by_rank_weighted_known_markers_with_its_evidence():
    reference = pd.DataFrame({"cell_type": ["B", "B", "Mono", "Mono", "NK"],
                              "gene": ["CD79A", "CD74", "LYZ", "CD74", "GNLY"]})
    markers = _markers({"0": ["HERPUD1", "CD74", "CD79A"], "1": ["LYZ", "XIST"], "2": ["ACTB", "MALAT1"],
                        "3": ["x"] * 3 + ["gnly"]})
    table = suggest_names(markers, reference, top=4).set_index("group")
    assert table.loc["0", "suggestion"] == "B" and table.loc["0", "evidence"] == "CD74 (#2), CD79A (#3)"
    assert table.loc["0", "score"] == pytest.approx(0.75 + 0.5)
    assert table.loc["0", "runner_up"] == "Mono" and table.loc["0", "runner_up_score"] == pytest.approx(0.75)
    assert table.loc["1", "suggestion"] == "Mono"
    assert table.loc["2", "suggestion"] == "" and table.loc["2", "evidence"] == ""  # no known marker
    assert table.loc["3", "suggestion"] == ""  # case-insensitive match, but rank 4 of 4 is too thin alone
    assert table.loc["3", "runner_up"] == "" and table.index.tolist() == ["0", "1", "2", "3"]


def test_shipped_table_covers_blood_and_pancreas_and_user_tables_are_checked():
    table = reference_markers()
    assert {"blood", "pancreas"} == set(table["tissue"])
    assert {"B cells", "NK cells", "Beta cells", "Acinar cells"} <= set(table["cell_type"])
    assert set(reference_markers("pancreas")["tissue"]) == {"pancreas"}
    with pytest.raises(ValueError, match="choose one of blood, pancreas"):
        reference_markers("liver")
    mine = read_reference(b"Cell_Type,Gene,source\nT cells,CD3E,me\nT cells,CD3D,me\n")
    assert list(mine.columns) == ["cell_type", "gene"] and len(mine) == 2
    with pytest.raises(ValueError, match="no column cell_type"):
        read_reference(b"type,gene\nT,CD3E\n")
    with pytest.raises(ValueError, match="no rows"):
        read_reference(b"cell_type,gene\n")


@pytest.mark.slow
def test_suggestions_name_the_annotated_cell_types_of_the_12k_sample(kang_12k_default):
    """Markers of the published cell types, named from the shipped blood table: most get their own name."""
    adata, run = kang_12k_default
    markers = find_markers(run, adata, groupby="cell_type", wilcoxon=False)
    table = suggest_names(markers.table, reference_markers("blood")).set_index("group")
    print(table[["suggestion", "score", "evidence"]].to_string())
    right = [g for g in table.index if table.loc[g, "suggestion"] == g]
    assert {"B cells", "CD14+ Monocytes", "FCGR3A+ Monocytes", "NK cells"} <= set(right), table
    assert len(right) >= 6, table
