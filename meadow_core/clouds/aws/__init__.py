"""Meadow on AWS: EC2 instances chosen from a price catalog, S3 + SQS transport,
a DynamoDB registry, and the dev cloud (moto plus simulated VMs) for offline use."""
