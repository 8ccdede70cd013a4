"""What retention must not recycle because routing still owes something for it: studies with
instances waiting in the forwarding queue, and studies named by a Storage Commitment request
whose report is not delivered yet (the requester would be told of instances we just deleted).

Registered with archive.retention when the app loads (routing.apps), so that archive never
imports routing.
"""

from archive.models import Instance
from routing.models import CommitmentTransaction, ForwardItem


def studies_with_pending_routing() -> set[int]:
    """Primary keys of the studies that retention must keep for now."""
    studies = set(ForwardItem.objects.waiting().values_list("study_id", flat=True).distinct())
    uids = {
        reference[1]
        for references in CommitmentTransaction.objects.filter(
            state=CommitmentTransaction.PENDING
        ).values_list("references", flat=True)
        for reference in references
    }
    if uids:
        studies.update(
            Instance.objects.filter(sop_instance_uid__in=uids)
            .values_list("series__study_id", flat=True)
            .distinct()
        )
    return studies
