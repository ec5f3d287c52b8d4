"""Transports: where a place keeps payloads (object store) and work (job queue).

``base`` defines the interfaces the caller and the agent use; ``local`` implements them
with a directory and SQLite for ``LocalHost``. Cloud places implement the same
interfaces with S3 + SQS + DynamoDB or Blob + Queue + Table.
"""
