"""The Clean Descriptors Option: keep the imaging words of a description, drop everything else.

PS3.15 E.3.5 asks that descriptions be "cleaned" of identifying text without saying how. medge
keeps a word only when it is a known imaging descriptor (anatomy, orientation, technique, contrast,
reconstruction) from :data:`DESCRIPTOR_WORDS`, a short measurement with its unit such as ``2.5mm``,
``120kV`` or ``5%``, or a sequence name such as ``T1``; every other word, a bare number included, is
dropped. So a name, an ID, a date or a hospital typed into a series description never survives,
whatever it looks like: ``"Chest 2.5mm Smith J 12/03/2024"`` becomes ``"Chest 2.5mm"``. When
nothing is left, the caller falls back to the Basic Profile's action.
"""

from __future__ import annotations

import re

__all__ = ["DESCRIPTOR_WORDS", "clean_descriptor"]

DESCRIPTOR_WORDS = frozenset(
    """
    abdomen abdominal ankle aorta aortic arm arterial artery axial axilla back bladder bone bones brain
    breast bronchial cardiac cardio carotid cerebral cervical chest clavicle coccyx colon coronal coronary
    cranial cspine elbow extremity face facial femur finger foot forearm hand head heart hip humerus iac
    internal joint kidney kidneys knee larynx leg liver lower lumbar lung lungs mandible maxillofacial
    mediastinum neck orbit orbits pancreas pelvis pelvic pituitary prostate pulmonary renal rib ribs sacrum
    scapula shoulder sinus sinuses skull spine spleen sternum temporal thigh thoracic thorax thyroid tibia
    toe trachea upper uterus venous vertebra whole wrist body left right bilateral lt rt ap pa lat lateral
    sagittal sag cor ax oblique transverse tra sup inf ant post anterior posterior superior inferior
    medial distal proximal frontal
    ct mr mri pet spect cr dx mg us xa rf nm pt ot sc
    with without w wo w/ w/o and or of the in on plus contrast non noncontrast iv oral bolus arterial portal
    delayed phase phases early late pre post native enhanced enhancement
    routine standard std protocol scout localizer locator topogram survey series study exam examination
    scan helical spiral sequential volume vol recon reconstruction reformat reformats mpr mip minip vr
    thin thick slice slices slab soft tissue tis lung bone mediastinal window kernel sharp smooth
    high low resolution hr hrct dose ldct lowdose ultra angio angiography perfusion calcium score scoring
    screening followup follow up inspiration expiration inspiratory expiratory prone supine phantom
    calibration qa qc test water air uniformity noise
    t1 t2 pd flair dwi adc swi gre tse fse se ir stir dti bold fiesta space mprage vibe haste trufi
    fatsat fat sat water in out opp ip op gad gd pre post dynamic diffusion weighted tof mra mrv
    localiser cine flow spectroscopy svs epi bolus
    primary secondary original derived image images summary report dosereport dose info
    """.split()  # noqa: SIM905 -- a block of words is easier to read and extend than a list literal
)
"""Lower-case words the Clean Descriptors Option keeps (a descriptor vocabulary, not a dictionary of English)."""

# A number is kept only with its unit: a bare number may be a fragment of an ID or a date.
_MEASUREMENT = re.compile(r"^\d{1,3}(?:\.\d{1,3})?(?:mm|cm|kv|kvp|mas|ma|ms|sec|%|deg)$", re.IGNORECASE)
_SEQUENCE_NAME = re.compile(r"^[a-z]{1,2}\d{1,2}$", re.IGNORECASE)  # T1, T2, B30 ...
# Split on blanks and separators only: "12/03/2024" or "PAT-12345" stay one word, and are dropped whole.
_TOKEN = re.compile(r"[^\s_^|,;()\[\]{}+=\"']+")


def clean_descriptor(text: str) -> str:
    """The words of ``text`` a descriptor may keep, joined by single spaces ("" when none are left)."""
    kept = []
    for token in _TOKEN.findall(text):
        word = token.strip(".-*#")
        if not word:
            continue
        if word.lower() in DESCRIPTOR_WORDS or _MEASUREMENT.match(word) or _SEQUENCE_NAME.match(word):
            kept.append(word)
    return " ".join(kept)
