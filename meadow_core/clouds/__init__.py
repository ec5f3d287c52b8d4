"""Cloud drivers: the only code that imports a cloud's SDK (boto3, azure.*, kubernetes)."""
