"""Request parser, terminology and the LLM plug-in interface."""

import pytest

from MedAgentSegLib.language import parse_request
from MedAgentSegLib.language.llm import LLMParser, LocalLLMParser
from MedAgentSegLib.language.modality import modality_from_metadata, parse_modality
from MedAgentSegLib.language.terminology import Terminology, default_terminology, singular


@pytest.mark.parametrize("word,expected", [("kidneys", "kidney"), ("arteries", "artery"), ("pancreas", "pancreas"),
                                           ("vertebrae", "vertebra"), ("humerus", "humerus"), ("lens", "lens")])
def test_singular(word, expected):
    assert singular(word)[0] == expected


@pytest.mark.parametrize("label,concept,side", [
    ("kidney_left", "kidney", "L"), ("Left-Kidney", "kidney", "L"), ("left kidney", "kidney", "L"),
    ("TemporalLobe_R", "temporal_lobe", "R"), ("RV", "right_ventricle", None), ("MYO", "myocardium", None),
    ("heart_left_ventricle_blood_cavity", "left_ventricle", None), ("ETbone_L", "eustachian_tube_bone", "L"),
    ("non-enhancing tumor", "non_enhancing_tumor", None), ("GTVnd", "gtv_nodal", None)])
def test_label_names_resolve(label, concept, side):
    from MedAgentSegLib.routing.library import Label
    from MedAgentSegLib.routing.matching import analyse_label

    info = analyse_label(Label(label, [1]), default_terminology())
    assert [(i.concept, i.laterality) for i in info.items] == [(concept, side)]


def test_kidneys_plural_both_sides_and_code():
    r = parse_request("segment both kidneys on this CT")
    assert r.command == "segment" and r.modality == "CT"
    assert [(t.concept, t.laterality) for t in r.targets] == [("kidney", None)]
    seg = r.targets[0].segment
    assert seg["type"]["code"] == "64033007" and len(seg["color"]) == 3


def test_side_gets_snomed_modifier():
    r = parse_request("refine the left lung")
    assert r.command == "refine"
    t = r.targets[0]
    assert (t.concept, t.laterality) == ("lung", "L")
    assert t.segment["name"] == "left lung" and t.segment["modifier"]["code"] == "7771000"


@pytest.mark.parametrize("text,command", [("undo", "undo"), ("accept", "accept"), ("reject", "reject"),
                                          ("stop", "stop"), ("next slice", "next_slice"),
                                          ("previous slice", "previous_slice"), ("whole volume", "whole_volume")])
def test_commands(text, command):
    r = parse_request(text)
    assert r.command == command and r.targets == []


def test_empty_and_nonsense_give_a_clear_answer():
    r = parse_request("   ")
    assert r.command == "empty" and "empty" in r.message
    r = parse_request("zzqx blorp")
    assert r.command == "unknown" and "did not" in r.message


def test_unknown_target_suggests_closest_names():
    r = parse_request("segment the pancres")  # typo fixed
    assert [t.concept for t in r.targets] == ["pancreas"] and r.warnings
    t = default_terminology()
    assert "gallbladder" in t.suggest("gallblader stone")


def test_modality_from_text_metadata_and_conflict():
    assert parse_request("segment the liver", image_metadata={"Modality": "MR"}).modality == "MR"
    r = parse_request("segment the liver on CT", image_metadata="MR")
    assert r.modality == "CT" and any("metadata says MR" in w for w in r.warnings)
    spec = parse_modality("whole tumor in brain MRI using T2 FLAIR")
    assert spec.bases == {"MR"} and spec.sequences == {"FLAIR"}
    assert [sorted(a) for a in parse_modality("MR or CT", split_or=True).alternatives] == [["MR"], ["CT"]]
    assert parse_modality("PET/CT").bases == {"PET", "CT"}
    assert modality_from_metadata("PT") == "PET" and modality_from_metadata(None) is None


def test_vertebra_level_is_not_an_mr_sequence():
    r = parse_request("segment the T1 vertebra on CT")
    assert r.modality == "CT" and r.targets[0].concept == "vertebra_T1"


def test_lesion_site_from_words_and_context():
    assert [(t.concept, t.site) for t in parse_request("liver tumours").targets] == [("tumor", "liver")]
    assert [(t.concept, t.site) for t in parse_request("the tumor in the liver").targets] == [("tumor", "liver")]


def test_bad_terminology_is_named():
    with pytest.raises(ValueError, match="concepts"):
        Terminology({"x": 1}, source="t.json")
    with pytest.raises(ValueError, match="unknown concept 'nope'"):
        Terminology({"concepts": [{"id": "a", "name": "a", "is_a": ["nope"]}]}, source="t.json")


def test_llm_parser_plugin_interface(tmp_path):
    p = LocalLLMParser(generate=lambda prompt: "segment the left kidney on CT\n")
    assert isinstance(p, LLMParser)
    r = p.parse("could you do the sinistral renal thing")
    assert [(t.concept, t.laterality) for t in r.targets] == [("kidney", "L")] and r.modality == "CT"
    # a useless LLM answer falls back to the rule parser
    r = LocalLLMParser(generate=lambda prompt: "???").parse("segment the spleen")
    assert [t.concept for t in r.targets] == ["spleen"]
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        LocalLLMParser(model_path=tmp_path / "missing")
