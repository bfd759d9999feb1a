"""What a promotion step did, in one type: the promoters (services/trainer/promotion.py) return
it, and the shadow judge (services/trainer/shadow.py), which the cluster promoter reads shadow
evidence from, uses it without importing the promoters back."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    """The new model serves."""
    detail: str
    """What happened, for people; code reads the fields, never these words."""
    served_version: str = ""
    rolled_back: bool = False
    """The new model was rolled out, then the previous one restored (cluster: `helm rollback`)."""
    stage: str = ""
    """Cluster: the step that decided it (canary, ready, live_check, promote, helm_busy, helm)."""
