"""The cloud-neutral half of the dev cloud: a VM as a network namespace.

`netns` makes the namespace, `vminit` is the VM's init, `procs` keeps every process
the simulator starts reapable, and `bridge` forwards loopback ports from inside a VM
to the emulated cloud's services on the host.
"""
