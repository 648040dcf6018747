"""podnet-controller-manager: level-triggered controllers of workload objects.

replication: the ReplicationController controller (pure diff, ranking and expectations, plus
the sync loop that writes pods and status through the API client).
"""

from controlplane.controllers.replication import (
    Expectations,
    ReplicationManager,
    claim_pods,
    compute_status,
    rank_for_deletion,
    replica_diff,
)

__all__ = ["Expectations", "ReplicationManager", "claim_pods", "compute_status", "rank_for_deletion",
           "replica_diff"]
