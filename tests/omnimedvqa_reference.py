"""OmniMedVQA's official question-answering rule, transcribed by hand as the reference for the tests (used by
test_scoring.py on hand-made items and by test_official_rule.py on a converted raw release)."""

from __future__ import annotations

import difflib

# Reference: a faithful transcription of OmniMedVQA's scoring, from OpenGVLab/Multi-Modality-Arena,
# MedicalEval/Question-answering_Score/utils/medicalqa.py (str_similarity, find_most_similar_index and the
# per-item body of MedicalEval). Kept as published, including the bare except that counts a failure as wrong.


def _ref_str_similarity(str1, str2):
    seq = difflib.SequenceMatcher(None, str1, str2)
    return seq.ratio()


def _ref_find_most_similar_index(str_list, target_str):
    most_similar_str = None  # noqa: F841 (as published)
    most_similar_index = None
    highest_similarity = 0
    for i, str in enumerate(str_list):  # noqa: A001 (as published)
        similarity = _ref_str_similarity(str, target_str)
        if similarity > highest_similarity:
            most_similar_str = str  # noqa: F841
            most_similar_index = i
            highest_similarity = similarity
    return most_similar_index


def ref_is_correct(data):
    """One item of MedicalEval: True when counted in ``succ``."""
    try:
        a, b, c, d = data.get("option_A"), data.get("option_B"), data.get("option_C"), data.get("option_D")
        answer_list = [a, b]
        if c is not None:
            answer_list.append(c)
        if d is not None:
            answer_list.append(d)
        return answer_list[_ref_find_most_similar_index(answer_list, data["model_pred"])] == data["gt_answer"]
    except Exception:  # the published code: `except: continue` -> not counted as correct
        return False


def omni_item(options, gt, prediction):
    item = {"gt_answer": gt, "model_pred": prediction}
    for letter, option in zip("ABCD", options):
        item[f"option_{letter}"] = option
    return item
