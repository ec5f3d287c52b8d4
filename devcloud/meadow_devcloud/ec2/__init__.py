"""The EC2 half of the dev cloud: moto in server mode, the fake IMDS, and what boots
moto's instances as VMs (`meadow_devcloud.vm`)."""
