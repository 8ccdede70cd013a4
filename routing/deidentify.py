"""De-identified copies for forwarding rules with `deidentify` (dicognito does the work).

Pseudonyms are consistent everywhere because dicognito derives every replacement value from
its seed and the original value alone (an MD5 of seed + value): the same patient ID, name or
UID gives the same pseudonym in every instance, study, process and restart, as long as the
seed is the same. The seed is the site's secret, settings.DEIDENTIFY_SEED (environment
DEIDENTIFY_SEED), or else an HMAC of SECRET_KEY, so it is stable but cannot be guessed from
what is sent; knowing it would allow checking a guessed patient ID against a pseudonym. No
mapping from pseudonym to original is stored anywhere.

The stored file is never touched: the copy is decoded from it (archive.retrieval).
"""

import hashlib
import hmac
from functools import cache

from dicognito.anonymizer import Anonymizer
from dicognito.unwantedelements import UnwantedElementsStripper
from django.conf import settings
from pydicom.dataset import Dataset

# Free text that often names the patient or clinicians and that dicognito keeps; removed.
FREE_TEXT = (
    "AdditionalPatientHistory",
    "ImageComments",
    "PatientComments",
    "RequestedProcedureComments",
    "StudyComments",
)


def deidentify_seed() -> str:
    """The site's pseudonym seed: DEIDENTIFY_SEED, else derived from SECRET_KEY."""
    configured = getattr(settings, "DEIDENTIFY_SEED", "")
    if configured:
        return configured
    return hmac.new(
        settings.SECRET_KEY.encode(), b"routing.deidentify pseudonym seed", hashlib.sha256
    ).hexdigest()


@cache
def _anonymizer(seed: str) -> Anonymizer:
    # Its handlers keep no state between data sets: one per seed serves every thread.
    anonymizer = Anonymizer(seed=seed)
    anonymizer.add_element_handler(UnwantedElementsStripper(*FREE_TEXT))
    return anonymizer


def dataset_deidentify(ds: Dataset) -> Dataset:
    """Replace or remove the identifying elements of `ds` in place (and return it): names,
    IDs, UIDs (class and transfer syntax UIDs excepted), dates shifted, addresses, the free
    text of FREE_TEXT and every private element. Pixel data is left as it is."""
    ds.remove_private_tags()
    _anonymizer(deidentify_seed()).anonymize(ds)
    return ds
