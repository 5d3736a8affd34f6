"""Hand-worked cases for the normalizer and every scoring rule of DESIGN.md §6."""

from __future__ import annotations

import random

import pytest
from omnimedvqa_reference import omni_item as _omni_item
from omnimedvqa_reference import ref_is_correct as _ref_is_correct

from training.evaluation import normalize as normalize_mod
from training.evaluation import synonyms
from training.evaluation.normalize import normalize
from training.evaluation.scorers import (
    SCORERS,
    contains,
    flags,
    gold_indices,
    gold_option,
    mc_inputs,
    mc_qa_choice,
    normalized_exact,
    token_f1,
    token_recall,
    unscorable,
    yes_no,
    yes_no_first,
)


def _record(prediction: str, answer: str, **extra) -> dict:
    return {"question": "q?", "answer": answer, "prediction": prediction, **extra}


# --- normalizer -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The X-Ray.", "xray"),
        ("x_ray.", "xray"),  # OmniMedVQA answer spelling
        ("radiograph", "xray"),
        ("MR", "mri"),
        ("MRI", "mri"),
        ("Magnetic Resonance Imaging", "mri"),
        ("MR (Mag-netic Resonance Imaging)", "mri"),  # the release's typo; one canonical form, not "mri mri"
        ("CT(Computed Tomography)", "ct"),
        ("OCT (Optical Coherence Tomography", "oct"),
        ("Dermoscopy.", "dermoscopy"),
        ("  An   apple!! ", "apple"),
        ("Three nodules", "3 nodules"),
        ("twenty-one", "21"),
        ("thirty", "30"),
        ("2.5 cm.", "2.5 cm"),  # decimal dot kept, final dot dropped
        ("Crohn's disease", "crohns disease"),
        ("A fundus photograph", "fundus photography"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_is_idempotent():
    samples = ["The X-Ray.", "MR (Mag-netic Resonance Imaging)", "twenty one cells", "Yes, it is.", "2.5 mm"]
    samples += [v for variants in synonyms.SYNONYMS.values() for v in variants]
    for text in samples:
        assert normalize(normalize(text)) == normalize(text), text


def test_synonym_table_is_extensible(monkeypatch):
    # Adding a row to the data table is all it takes.
    monkeypatch.setitem(synonyms.SYNONYMS, "pneumothorax", ["collapsed lung", "PTX"])
    normalize_mod._synonym_index.cache_clear()
    try:
        assert normalize("A collapsed lung") == "pneumothorax"
        assert normalized_exact("PTX", "pneumothorax")
    finally:
        monkeypatch.undo()
        normalize_mod._synonym_index.cache_clear()
    assert normalize("PTX") == "ptx"


def test_synonym_table_rejects_unnormalized_canonical(monkeypatch):
    monkeypatch.setitem(synonyms.SYNONYMS, "X-Ray", ["xray"])
    normalize_mod._synonym_index.cache_clear()
    try:
        with pytest.raises(ValueError, match="not normalized"):
            normalize("x")
    finally:
        monkeypatch.undo()
        normalize_mod._synonym_index.cache_clear()


# --- text rules -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("The liver.", "liver", True),  # punctuation and articles
        ("MR", "MRI", True),  # synonym
        ("mri", "Magnetic resonance imaging", True),
        ("X-ray", "x_ray.", True),
        ("three", "3", True),  # number word
        ("liver and kidney", "liver", False),
        ("", "liver", False),  # empty prediction
        ("MRA", "MRI", False),
        # issue 12 (3): an article that is the whole content, or last, is content
        ("", "A", False),
        ("A", "A", True),
        ("Hepatitis", "Hepatitis A", False),
        ("hepatitis A.", "Hepatitis A", True),
        ("The", "", False),
        # issue 12 (6): a thousands comma
        ("1,000", "1000", True),
        ("12,345 cells", "12345 cells", True),
        ("1,5", "15", False),  # not a thousands separator
    ],
)
def test_normalized_exact(prediction, answer, expected):
    assert normalized_exact(prediction, answer) is expected


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Yes, it is.", "yes", True),
        ("NO", "No", True),
        ("No, there is no lesion.", "no", True),  # "no" twice, still only one of the two words
        ("yes and no", "no", False),  # says both: not committed
        ("Yes. No.", "yes", False),
        ("It is not visible", "no", False),  # neither word ("not" is not "no")
        ("Yesterday", "yes", False),  # whole words only
        ("", "yes", False),  # empty prediction
        ("yes", "liver", None),  # rule does not apply to an open answer
    ],
)
def test_yes_no(prediction, answer, expected):
    assert yes_no(prediction, answer) is expected


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("the liver and kidney", "liver", True),
        ("A CT scan of the chest", "computed tomography", True),  # synonyms on both sides
        ("MRI", "MR", True),
        ("MR", "MRI", True),
        ("doctor", "ct", False),  # whole words: "ct" is not inside "doctor"
        ("yes and no", "no", True),  # why contains is not the yes/no rule
        ("upper lobe", "left upper lobe", False),  # the whole phrase must occur
        ("", "liver", False),  # empty prediction
        ("liver", "", False),  # empty answer is never found
        ("A", "A", True),  # issue 12 (3): the answer "A" is found in "A"
        ("type A", "A", True),
        ("", "A", False),
    ],
)
def test_contains(prediction, answer, expected):
    assert contains(prediction, answer) is expected


def test_empty_prediction_against_an_article_answer_scores_zero():
    # issue 12 (3): "" vs "A" used to give recall and F1 1.0 (both sides emptied by article removal)
    assert token_recall("", "A") == 0.0
    assert token_f1("", "A") == 0.0
    assert token_recall("A", "A") == 1.0


@pytest.mark.parametrize(
    ("prediction", "answer", "strict", "lenient"),
    [
        ("Yes, there is a mass with no calcification.", "yes", False, True),  # issue 12 (6)
        ("No, yes", "no", False, True),
        ("No, yes", "yes", False, False),
        ("yes", "yes", True, True),
        ("It is not visible", "no", False, False),  # neither word: wrong under both
        ("", "no", False, False),
        ("yes", "liver", None, None),
    ],
)
def test_yes_no_strict_and_first_word(prediction, answer, strict, lenient):
    assert yes_no(prediction, answer) is strict
    assert yes_no_first(prediction, answer) is lenient


def test_token_recall_and_f1_hand_worked():
    # answer [left, upper, lobe], prediction [upper, lobe]: common 2 -> recall 2/3, precision 1, F1 0.8
    assert token_recall("upper lobe", "left upper lobe") == pytest.approx(2 / 3)
    assert token_f1("upper lobe", "left upper lobe") == pytest.approx(0.8)
    # answer [pleural, effusion], prediction [effusion, in, left, lung] ("the" dropped): common 1
    # recall 1/2, precision 1/4, F1 = 2 * 1/4 * 1/2 / (3/4) = 1/3
    assert token_recall("Effusion in the left lung", "pleural effusion") == pytest.approx(0.5)
    assert token_f1("Effusion in the left lung", "pleural effusion") == pytest.approx(1 / 3)
    # multiplicity counts once per matching pair: [1, 1] vs [1]: common 1 -> P 1/2, R 1, F1 2/3
    assert token_f1("one one", "1") == pytest.approx(2 / 3)
    # a repeated prediction word is matched once per answer occurrence (LLaVA-Med's recall would give 2/3)
    assert token_recall("left left", "left lung") == pytest.approx(0.5)
    # synonyms count as the same token
    assert token_recall("magnetic resonance imaging", "MRI") == 1.0
    # empty prediction
    assert token_recall("", "liver") == 0.0
    assert token_f1("", "liver") == 0.0
    assert token_f1("", "") == 1.0


def test_token_flags_use_the_threshold():
    rec = _record("Effusion in the left lung", "pleural effusion")
    f = flags(rec)
    assert f["token_recall"] is True  # 0.5 >= 0.5
    assert f["token_f1"] is False  # 1/3 < 0.5


# --- OmniMedVQA's question-answering rule -----------------------------------------------------------------------


def _fixture():
    """Hand-picked items (ties, case, empty, duplicates) plus seeded random ones over a small alphabet."""
    items = [
        (["CT", "MRI", "X-Ray"], "MRI", "MRI"),
        (["CT", "MRI", "X-Ray"], "MRI", "The image is an MRI scan."),
        (["CT", "MRI"], "MRI", "mri"),  # raw strings: case matters, every ratio is 0 -> wrong
        (["CT", "MRI"], "CT", ""),  # empty prediction: all ratios 0 -> wrong
        (["cat", "car"], "car", "ca"),  # tie 0.8 / 0.8: the first option wins -> wrong
        (["cat", "car"], "cat", "ca"),  # same tie -> right
        (["Benign", "Benign", "Malignant"], "Benign", "benign tumour"),  # duplicate options
        (["Dermoscopy", "Microscopy", "Fundus Photography", "OCT"], "Dermoscopy", "dermoscopy image"),
        (["Lung", "Liver", "Brain", "Heart"], "Liver", "liver"),
    ]
    rng = random.Random(5)
    for _ in range(300):
        options = [
            "".join(rng.choice("abc ") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(2, 4))
        ]
        prediction = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 6)))
        items.append((options, rng.choice(options), prediction))
    return items


def test_mc_qa_score_matches_omnimedvqa_item_by_item():
    mismatches = []
    for options, gt, prediction in _fixture():
        expected = _ref_is_correct(_omni_item(options, gt, prediction))
        got = flags(_record(prediction, gt, options=options)).get("mc_qa_score")
        if got is not expected:
            mismatches.append((options, gt, prediction, expected, got))
    assert not mismatches


def test_mc_qa_hand_worked():
    # ratio = 2 * matches / (len(a) + len(b)): "ca" vs "cat" and "car" -> 2*2/5 = 0.8 each; first wins
    assert mc_qa_choice(["cat", "car"], "ca") == 0
    assert mc_qa_choice(["CT", "MRI"], "mri") is None  # raw, case-sensitive strings: all ratios 0
    assert mc_qa_choice(["CT", "MRI"], "") is None
    assert flags(_record("ca", "car", options=["cat", "car"]))["mc_qa_score"] is False
    assert flags(_record("", "CT", options=["CT", "MRI"]))["mc_qa_score"] is False


def test_gold_option_by_light_cleaning_only():
    # issue 12 (2): with full normalisation "RIGHT." could never be it, but "MR" -> "mri" made MRI look gold
    assert gold_option(["RIGHT.", "MRI", "MR  "], "MR") == "MR  "
    assert gold_indices(["RIGHT.", "MRI", "MR  "], "MR") == ((2,), None)
    assert gold_option(["CT", "MRI"], "CT") == "CT"
    assert gold_indices(["CT", "MRI"], "yes") == ((), "no_gold_option")
    # "Dermoscopy." vs "Dermoscopy" differ by more than case and outer spaces: not scorable, never guessed
    assert gold_indices(["Dermoscopy.", "CT"], "Dermoscopy") == ((), "no_gold_option")
    assert gold_indices(["mr", "MR ", "CT"], "Mr") == ((), "ambiguous_gold_option")
    # the answer string itself wins over a case variant, as OmniMedVQA's `answer_list[i] == gt_answer`
    assert gold_indices(["mr", "MR", "CT"], "MR") == ((1,), None)
    assert gold_indices(["Benign", "Benign", "CT"], "Benign") == ((0, 1), None)  # the same text twice


def test_mc_qa_score_uses_the_raw_release_strings():
    # issue 12 (1): right under the official rule on the raw options, wrong on the cleaned ones
    raw = ["CT(Computed Tomography)", "MR (Mag-netic Resonance Imaging)", "X-Ray", "Ultrasound"]
    rec = _record(
        "magnetic resonance imaging",
        "MRI",
        options=["CT", "MRI", "X-Ray", "Ultrasound"],
        options_raw=raw,
        answer_raw="MR (Mag-netic Resonance Imaging)",
    )
    assert flags(rec)["mc_qa_score"] is True
    cleaned = {k: v for k, v in rec.items() if k not in ("options_raw", "answer_raw")}
    assert flags(cleaned)["mc_qa_score"] is False  # "magnetic resonance imaging" is nearest to "Ultrasound"
    assert mc_inputs(rec)[2] == "raw" and mc_inputs(cleaned)[2] == "cleaned"


def test_unscorable_records_say_why():
    rec = _record("MR", "MR", options=["mr", "MR ", "CT"])
    assert "mc_qa_score" not in flags(rec)
    assert unscorable(rec) == {"mc_qa_score": "ambiguous_gold_option"}
    rec = _record("x", "Brain", options=["CT", "MRI"], mc_prefix_choice=0)
    assert unscorable(rec) == {"mc_qa_score": "no_gold_option", "mc_prefix_score": "no_gold_option"}
    assert unscorable(_record("yes", "yes")) == {}


@pytest.mark.parametrize("choice", [-1, 3, 5, True, 1.0, "1"])
def test_mc_prefix_choice_is_validated(choice):
    # issue 12 (4): -1 used to pick the last option silently, 5 raised IndexError
    with pytest.raises(ValueError, match="mc_prefix_choice"):
        flags(_record("x", "MRI", options=["CT", "MRI", "X-Ray"], mc_prefix_choice=choice))


# --- which rules apply -----------------------------------------------------------------------------------------


def test_flags_apply_only_where_the_record_allows():
    open_rec = _record("liver", "liver")
    assert set(flags(open_rec)) == {"normalized_exact", "contains", "token_recall", "token_f1"}
    yn = _record("yes", "yes", options=["CT", "MRI"])  # options that do not contain the answer: no mc rule
    assert set(flags(yn)) == {
        "normalized_exact",
        "yes_no",
        "yes_no_first",
        "contains",
        "token_recall",
        "token_f1",
    }
    mc = _record("MRI", "MRI", options=["CT", "MRI"])
    assert "mc_qa_score" in flags(mc) and "mc_prefix_score" not in flags(mc)


def test_mc_prefix_score_reads_the_models_choice():
    rec = _record("x", "MRI", options=["CT", "MRI", "X-Ray"])
    assert flags({**rec, "mc_prefix_choice": 1})["mc_prefix_score"] is True
    assert flags({**rec, "mc_prefix_choice": 0})["mc_prefix_score"] is False
    assert "mc_prefix_score" not in flags({**rec, "options": [], "mc_prefix_choice": 0})


def test_mc_prefix_score_indexes_the_raw_options_the_model_ranked():
    # eval ranks the release's raw strings when a record keeps them, as OmniMedVQA does: the choice indexes those.
    # Here the cleaned options collapse to two ([MRI, X-Ray]), so index 3 is only valid among the raw ones.
    rec = _record(
        "x", "MRI", options=["MRI", "X-Ray"], options_raw=["MR", "x_ray.", "X-ray", "MRI"], answer_raw="MRI"
    )
    assert flags({**rec, "mc_prefix_choice": 3})["mc_prefix_score"] is True
    assert (
        flags({**rec, "mc_prefix_choice": 0})["mc_prefix_score"] is False
    )  # "MR" is not the release's answer
    with pytest.raises(ValueError, match="0..3"):
        flags({**rec, "mc_prefix_choice": 4})
    # a raw answer that matches no raw option is not scorable, whatever the cleaned options say
    lost = {**rec, "answer_raw": "MRI scan", "mc_prefix_choice": 3}
    assert "mc_prefix_score" not in flags(lost)
    assert unscorable(lost)["mc_prefix_score"] == "no_gold_option"


def test_registry_names_every_rule():
    assert list(SCORERS) == [
        "normalized_exact",
        "yes_no",
        "yes_no_first",
        "contains",
        "token_recall",
        "token_f1",
        "mc_qa_score",
        "mc_prefix_score",
    ]
    assert all(s.rule for s in SCORERS.values())
    assert [n for n, s in SCORERS.items() if s.needs_model] == ["mc_prefix_score"]
