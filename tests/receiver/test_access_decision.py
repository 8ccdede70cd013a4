"""The access decision as a plain function: configuration, rules and proposal in, a Decision
out (no sockets, no database)."""

from pathlib import Path

import pytest
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    UltrasoundImageStorage,
    Verification,
)

from receiver.access import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    SERVICE_NOT_PROVIDED,
    UNKNOWN_SOP_CLASS,
    AccessRules,
    ClassRule,
    association_decide,
)
from receiver.config import AllowedPeer, resolve
from receiver.sop_classes import storage_sop_classes

STORAGE = frozenset(str(uid) for uid in storage_sop_classes())
SERVED = STORAGE | {Verification}


def decide(config=None, rules=None, proposed=(), served=SERVED, **kwargs):
    arguments = {"calling_ae": "MR_SCANNER", "called_ae": "MY_PACS", "address": "10.0.0.5"}
    return association_decide(
        config=config or resolve({}),
        rules=rules or AccessRules(),
        proposed=proposed,
        served=served,
        storage_classes=STORAGE,
        **{**arguments, **kwargs},
    )


def test_storage_class_outside_accept_is_refused_and_says_where_the_list_came_from():
    decision = decide(
        resolve({"accepted_sop_classes": "CT,MR"}),
        proposed=[MRImageStorage, UltrasoundImageStorage, Verification],
    )
    assert decision.rejection is None
    assert decision.accepted == (MRImageStorage, Verification)
    assert [(r.abstract_syntax, r.why) for r in decision.refused] == [
        (UltrasoundImageStorage, "not in --accept")
    ]
    assert decision.refusal_summary() == (
        "refused 1 of 3 presentation contexts: Ultrasound Image Storage (not in --accept)"
    )


def test_the_file_is_named_as_the_source_of_the_accepted_classes(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("accepted_sop_classes: [CT, MR]\n")
    decision = decide(resolve({}, path), proposed=[UltrasoundImageStorage])
    assert decision.refused[0].why == "not in accepted_sop_classes of the configuration file"


def test_admin_rules_refuse_and_accept_on_top_of_the_configuration():
    rules = AccessRules(
        class_rules=(
            ClassRule("accept", "US", frozenset({UltrasoundImageStorage})),
            ClassRule("refuse", "MR Image Storage", frozenset({MRImageStorage})),
        )
    )
    decision = decide(
        resolve({"accepted_sop_classes": "CT,MR"}),
        rules,
        proposed=[CTImageStorage, MRImageStorage, UltrasoundImageStorage],
    )
    assert decision.accepted == (CTImageStorage, UltrasoundImageStorage)
    assert decision.refused[0].why == "refused by the admin's SOP class rule 'MR Image Storage'"


def test_refuse_rule_wins_over_accept_rule():
    rules = AccessRules(
        class_rules=(
            ClassRule("accept", "CT", frozenset({CTImageStorage})),
            ClassRule("refuse", "CT", frozenset({CTImageStorage})),
        )
    )
    assert decide(rules=rules, proposed=[CTImageStorage]).accepted == ()


def test_services_we_do_not_serve_and_unknown_classes_are_refused_with_their_reason():
    decision = decide(
        proposed=[StudyRootQueryRetrieveInformationModelFind, "1.2.3.4.5", CTImageStorage]
    )
    assert decision.accepted == (CTImageStorage,)
    assert {(r.name, r.why) for r in decision.refused} == {
        ("Study Root Query/Retrieve Information Model - FIND", SERVICE_NOT_PROVIDED),
        ("1.2.3.4.5", UNKNOWN_SOP_CLASS),
    }


def test_a_service_the_ae_serves_is_left_to_it_whatever_accepted_sop_classes_says():
    """Once the AE serves C-GET (another module's handlers), its context is not a storage
    class and the storage filter does not touch it."""
    decision = decide(
        resolve({"accepted_sop_classes": "CT"}),
        proposed=[StudyRootQueryRetrieveInformationModelGet],
        served=SERVED | {StudyRootQueryRetrieveInformationModelGet},
    )
    assert decision.accepted == (StudyRootQueryRetrieveInformationModelGet,)


def test_verification_is_always_accepted_and_repeated_proposals_count_once():
    decision = decide(
        resolve({"accepted_sop_classes": "CT"}),
        proposed=[Verification, Verification, UltrasoundImageStorage, UltrasoundImageStorage],
    )
    assert decision.accepted == (Verification,)
    assert len(decision.refused) == 1


@pytest.mark.parametrize(
    ("peers", "admin", "address", "accepted"),
    [
        ((AllowedPeer("MR_SCANNER"),), (), "10.0.0.5", True),
        ((), (AllowedPeer("MR_SCANNER", "10.0.0.0/24"),), "10.0.0.5", True),
        ((), (AllowedPeer("MR_SCANNER", "10.0.1.0/24"),), "10.0.0.5", False),
        ((AllowedPeer("CT_SCANNER"),), (), "10.0.0.5", False),
    ],
)
def test_known_ae_from_file_or_admin(peers, admin, address, accepted):
    config = resolve({"require_known_ae": True, "allowed_aes": peers})
    decision = decide(config, AccessRules(allowed_aes=admin), address=address)
    if accepted:
        assert decision.rejection is None
    else:
        assert decision.rejection == CALLING_AE_NOT_RECOGNISED
        assert decision.why == "calling AE title 'MR_SCANNER' is not allowed from 10.0.0.5"


def test_called_ae_title_is_checked_when_required():
    config = resolve({"require_called_ae_title": True, "ae_title": "MY_PACS"})
    assert decide(config, called_ae="OTHER  ").rejection == CALLED_AE_NOT_RECOGNISED
    assert decide(config, called_ae="MY_PACS ").rejection is None


def test_summary_of_many_refusals_is_short():
    decision = decide(
        resolve({"accepted_sop_classes": "CT"}),
        proposed=[str(uid) for uid in storage_sop_classes()][:40],
    )
    summary = decision.refusal_summary()
    assert summary.startswith(f"refused {len(decision.refused)} of 40 presentation contexts: ")
    assert summary.endswith(f"and {len(decision.refused) - 3} more")
