"""The cloud-neutral half of the dev cloud: a VM as a network namespace.

`simulator.Simulator` boots the instances a cloud emulation reports (`cloud` is the
interface it implements) and destroys them when they end; `netns` makes the
namespace, `vminit` is the VM's init, `procs` keeps every process the simulator starts
reapable, and `bridge` forwards loopback ports from inside a VM to the emulated
cloud's services on the host. Nothing here names a cloud.
"""
