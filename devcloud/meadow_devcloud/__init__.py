"""The dev cloud: an emulated cloud plus a simulator that boots its instances as local VMs.

`vm` is the cloud-neutral part (a VM as a network namespace, the simulator, and the
interface a cloud's emulation implements); `ec2` is EC2 on moto (`ec2.DevCloud`,
`ec2.cli.devcloud` mounted as `meadow aws devcloud`). See devcloud/README.md.
"""
