"""scripts/compare.py: grouping robustness rows into "all" and "w/o X", and the Table-1-style output."""

import csv
import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare.py"
spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write_cases(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "subset", "dice", "hd95"])
        writer.writeheader()
        writer.writerows(rows + [{"case": "mean", "subset": "T1", "dice": 9, "hd95": 9}])  # summary rows: skipped


def test_conditions_keep_the_full_set_and_each_one_left_out(tmp_path):
    cases = tmp_path / "robustness_cases.csv"
    write_cases(cases, [
        {"case": "a", "subset": "T1+FLAIR", "dice": 0.8, "hd95": 4.0},
        {"case": "a", "subset": "T1", "dice": 0.5, "hd95": 8.0},
        {"case": "a", "subset": "FLAIR", "dice": 0.7, "hd95": 6.0},
        {"case": "b", "subset": "T2", "dice": 0.6, "hd95": 5.0},  # a single sequence: only "all"
    ])
    grouped = compare.conditions(cases)
    assert grouped["all"] == [{"dice": 0.8, "hd95": 4.0}, {"dice": 0.6, "hd95": 5.0}]
    assert grouped["w/o FLAIR"] == [{"dice": 0.5, "hd95": 8.0}]  # session a without FLAIR is its T1 row
    assert grouped["w/o T1"] == [{"dice": 0.7, "hd95": 6.0}]
    assert grouped["w/o T2"] == [] and grouped["w/o PD"] == []


def test_results_table_averages_per_model_and_condition(tmp_path):
    results = {"A": {"all": [{"dice": 0.2, "hd95": 10.0}, {"dice": 0.4, "hd95": math.nan}], "w/o T1": []},
               "B": {"all": [{"dice": 0.1, "hd95": 3.0}, {"dice": 0.3, "hd95": 5.0}], "w/o T1": []}}
    table = compare.write_results(results, tmp_path, "# header", footer="renamed: 0.5\n")
    assert (tmp_path / "results.md").read_text() == table and table.endswith("| nan / nan |\nrenamed: 0.5\n")
    assert "| A | 0.300 / 10.0 | nan / nan |" in table  # NaN HD95 left out of the mean
    assert "| B | 0.200 / 4.0 | nan / nan |" in table
    assert "all (n=2)" in table and "w/o T1 (n=0)" in table
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["model"], r["condition"], r["n_cases"]) for r in rows] == [
        ("A", "all", "2"), ("A", "w/o T1", "0"), ("B", "all", "2"), ("B", "w/o T1", "0")]
