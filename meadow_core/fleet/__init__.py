"""The fleet layer: VMs Meadow launches itself (EC2, Azure; not Kubernetes, where the
cluster is the fleet). Registry semantics, warm-first allocation with fallback,
supervision, idle self-termination, interruption hand-back and bootstrap, over the
small protocols in ``ports`` that each cloud's driver implements."""
