"""The EC2 half of the dev cloud: moto in server mode, the fake IMDS, and the source of
instances (`instances.Ec2Instances`) from which `meadow_devcloud.vm` boots VMs.

`DevCloud` (in `devcloud`) puts them together; `installed.installed_devcloud` adds
`meadow aws install`; `cli.devcloud` is the click group mounted as `meadow aws devcloud`.
"""

from meadow_devcloud.ec2.devcloud import DevCloud, cleanup
from meadow_devcloud.ec2.moto import MotoServer, client_env
from meadow_devcloud.vm.simulator import DevCloudError

__all__ = ["DevCloud", "DevCloudError", "MotoServer", "cleanup", "client_env"]
