"""Library loading/validation, matching and the route CLI."""

import json
from pathlib import Path

import pytest

from MedAgentSegLib.routing import Router
from MedAgentSegLib.routing.cli import main
from MedAgentSegLib.routing.library import LibraryError, load_entry, load_library

HERE = Path(__file__).parent
LIB = HERE / "fixtures_routing" / "library"
REPO = HERE.parent


@pytest.fixture(scope="module")
def router():
    return Router(LIB)


def test_shipped_library_and_fixtures_validate():
    assert {e.name for e in load_library(REPO / "Resources" / "Models")} >= {"TotalSegmentator_total"}
    assert len(load_library(LIB)) == 10


def test_union_label_and_free_modality_forms():
    e = load_entry({"name": "B", "input_modalities": {"0": "MR T2 FLAIR", "1": "MR or CT"},
                    "labels": {"background": 0, "whole_tumor": [1, 2, 3], "edema": 2}})
    assert e.labels[1].ids == [1, 2, 3]
    assert e.channels[0].sequences == {"FLAIR"} and len(e.channels[1].alternatives) == 2


@pytest.mark.parametrize("data,field", [
    ({"input_modalities": {"0": "CT"}, "labels": {"liver": 1}}, "name"),
    ({"name": "x", "input_modalities": {"0": "CT"}, "labels": {"liver": "one"}}, "labels.liver"),
    ({"name": "x", "input_modalities": {"zero": "CT"}, "labels": {"liver": 1}}, "input_modalities"),
    ({"name": "x", "input_modalities": {"0": "CT"}, "labels": {"liver": 1}, "numTraining": -3}, "numTraining")])
def test_schema_errors_name_file_and_field(tmp_path, data, field):
    f = tmp_path / "broken.json"
    f.write_text(json.dumps(data))
    with pytest.raises(LibraryError) as ei:
        load_entry(f, source="broken.json")
    assert "broken.json" in str(ei.value) and field in str(ei.value)


def test_not_json_and_duplicate_names(tmp_path):
    (tmp_path / "a.json").write_text("{nope")
    with pytest.raises(LibraryError, match=r"a.json: not valid JSON"):
        load_library(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({"name": "X", "input_modalities": {"0": "CT"}, "labels": {"l": 1}}))
    (tmp_path / "b.json").write_text(json.dumps({"name": "X", "input_modalities": {"0": "CT"}, "labels": {"l": 1}}))
    with pytest.raises(LibraryError, match="already used"):
        load_library(tmp_path)


def test_kidneys_union_and_sides(router):
    assert router.route("segment both kidneys on this CT").matches == {"Fx_AbdomenCT": [3, 4], "Fx_KidneyCT": [1]}
    assert router.route("left kidney in CT").matches == {"Fx_AbdomenCT": [3]}


def test_heart_is_union_of_parts_not_one_vessel(router):
    m = router.route("heart on CT").matches
    assert m == {"Fx_ThoraxCT": [5], "Fx_WholeHeart": [1, 2, 3, 4, 5]}  # Aorta (6) is not a heart part


def test_more_specific_label_wins_and_lesion_site(router):
    assert router.route("enhancing tumor on T1ce").matches == {"Fx_BrainTumorMR": [3]}
    assert router.route("liver tumor on CT").matches == {"Fx_LiverTumorCT": [2]}
    assert router.route("liver and liver tumor").matches == {"Fx_LiverTumorCT": [1, 2]}


def test_modality_filters_and_explains(router):
    r = router.route("segment the kidneys on MR")
    assert r.matches == {} and "other modalities" in r.message and "Fx_AbdomenCT" in r.message
    assert router.route("lesion on PET").matches == {"Fx_PETCT_lesions": [1]}


def test_commands_do_not_route(router):
    r = router.route("undo")
    assert r.parsed.command == "undo" and r.matches == {}


def test_query_set_accuracy_is_reported(router):
    """The README's number: exact match of matches (and command) over Testing/data/queries.jsonl."""
    lines = [json.loads(x) for x in (HERE / "data" / "queries.jsonl").read_text().splitlines() if x.strip()]
    assert len(lines) >= 100
    ok = 0
    for rec in lines:
        res = router.route(rec["query"])
        exp = rec["expected"]
        ok += res.matches == {k: sorted(v) for k, v in exp["matches"].items()} and res.parsed.command == exp["command"]
    assert ok / len(lines) >= 0.9


def test_cli_jsonl(tmp_path, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text('{"query": "left kidney in CT"}\n{"query": "heart on MRI"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["route", "--library", str(LIB), "--queries", str(q), "--json", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert set(recs[0]) == {"query", "modality", "target", "matches"}
    assert recs[0]["matches"] == {"Fx_AbdomenCT": [3]} and recs[0]["modality"] == "CT"
    assert recs[1]["matches"] == {"Fx_WholeHeart": [1, 2, 3, 4, 5], "Fx_CardiacCine": [1, 2, 3]}
    assert main(["route", "left kidney", "--library", str(LIB)]) == 0
    assert "Fx_AbdomenCT: [3]" in capsys.readouterr().out


def test_cli_bad_library_is_clear(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "input_modalities": {"0": "CT"}, "labels": {}}))
    assert main(["route", "liver", "--library", str(tmp_path)]) == 2
    assert "bad.json: field 'labels'" in capsys.readouterr().err
