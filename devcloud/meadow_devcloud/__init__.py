"""The dev cloud: moto in server mode plus a simulator that boots its instances as local VMs.

See `simulator` for what a VM is; `cli.devcloud` is the click group mounted as
`meadow aws devcloud`.
"""

from meadow_devcloud.ec2.moto import MotoServer, client_env
from meadow_devcloud.simulator import DevCloud, DevCloudError, cleanup

__all__ = ["DevCloud", "DevCloudError", "MotoServer", "cleanup", "client_env"]
