"""The data table of the answer normalizer (see ``normalize.py``). Data only: extend it freely.

``SYNONYMS`` maps a canonical form to its variants. Write variants the way people write them ("X-ray", "x_ray"):
they are normalized (lower case, punctuation, articles, number words) when the table is loaded. A canonical form
must itself be normalized (lower case, no punctuation); it maps to itself automatically.

Only add a variant that is unambiguous inside a medical answer: a bare "us" (ultrasound) or "fundus" would also
rewrite ordinary words ("show us", "fundus of the stomach"), so they are left out on purpose.
A Python module rather than a JSON file so that it ships with the package without package_data.
"""

from __future__ import annotations

ARTICLES: tuple[str, ...] = ("a", "an", "the")

NUMBER_WORDS: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip

# "twenty one" / "twenty-one" -> 21 (a tens word followed by a unit word 1-9)
TENS_WORDS: dict[str, int] = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip

SYNONYMS: dict[str, list[str]] = {
    # OmniMedVQA's 12 modalities (DESIGN.md §4), incl. the release's typo "Mag-netic".
    "ct": ["CT", "computed tomography", "computerized tomography", "computerised tomography", "CT scan",
           "CAT scan", "CT image", "CT imaging"],
    "mri": ["MRI", "MR", "magnetic resonance imaging", "magnetic resonance", "MR imaging", "MRI scan",
            "MR image", "MRI image", "Mag-netic Resonance Imaging"],
    "xray": ["X-ray", "x_ray", "xray", "radiograph", "radiography", "plain radiograph", "plain film",
             "roentgenogram", "X-ray image", "radiographic image"],
    "ultrasound": ["ultrasound", "ultrasonography", "sonography", "sonogram", "ultrasound imaging",
                   "ultrasound image", "echography"],
    "dermoscopy": ["dermoscopy", "dermatoscopy", "dermoscopic image", "epiluminescence microscopy"],
    "microscopy": ["microscopy", "microscopy image", "microscopic image", "light microscopy"],
    "fundus photography": ["fundus photography", "fundus photograph", "fundus photo", "fundus image",
                           "fundus imaging", "retinal photography", "retinal photograph",
                           "color fundus photography", "colour fundus photography"],
    "oct": ["OCT", "optical coherence tomography"],
    "endoscopy": ["endoscopy", "endoscopic image", "endoscopic imaging"],
    "colposcopy": ["colposcopy", "colposcopic image"],
    "digital photography": ["digital photography", "digital photograph", "digital photo"],
    "infrared reflectance imaging": ["infrared reflectance imaging", "infrared reflectance", "infrared imaging",
                                     "IR imaging"],
}  # fmt: skip
