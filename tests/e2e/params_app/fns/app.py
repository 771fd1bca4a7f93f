"""Returns the variables the template gave it."""
import os


def handler(event, context):
    return {name: os.environ.get(name) for name in ("MESSAGE", "BUCKET_ARN", "MODE", "FROM_GLOBALS")}
