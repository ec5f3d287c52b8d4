"""The remote layer: running jobs in a place reached only through an object store, a
work queue and a job table (a cloud region, a cluster), whatever launches the machines.

``caller.RemoteHost`` is the caller's side; ``relay.MachineRelay`` runs on each machine
and feeds tasks into the ordinary local agent there. Both are written against the
small protocols in ``ports`` and name no cloud; drivers under ``meadow_core/clouds/``
implement them.
"""
